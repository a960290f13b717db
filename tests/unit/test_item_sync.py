"""Item-table replicas stay consistent through the shared delta log."""

from __future__ import annotations

import base64

import numpy as np

from flink_jobs.item_sync import DeltaBatch, ItemReplica, decode_batch, encode_batch
from online_models.implicit_mf import ImplicitMF


def _model() -> ImplicitMF:
    return ImplicitMF(n_factors=8, n_negatives=3, seed=3)


def _learn(model: ImplicitMF, replica: ItemReplica, user: str, items: list[str]) -> None:
    vector = model.new_user_vector(user)
    for i, item in enumerate(items):
        replica.record_own(model.update(vector, item, 1.0, f"{user}-{i}"), 1.0, 1000 + i)


def test_batches_round_trip_through_their_text_form() -> None:
    model = _model()
    replica = ItemReplica(model.items, origin=3)
    _learn(model, replica, "u", ["a", "b", "c"])
    batch = replica.take_batch()
    assert batch is not None and replica.take_batch() is None
    decoded = decode_batch(encode_batch(batch))
    assert decoded.origin == 3 and decoded.items == batch.items
    np.testing.assert_array_equal(decoded.factors, batch.factors)
    np.testing.assert_array_equal(decoded.bias, batch.bias)
    assert decoded.weights[0] == 1.0 and decoded.ts[0] == 1000


def test_positives_carry_their_category_and_old_batches_still_decode() -> None:
    model = _model()
    replica = ItemReplica(model.items, origin=1)
    vector = model.new_user_vector("u")
    replica.record_own(model.update(vector, "milk", 1.0, "e1"), 1.0, 1000, "dairy")
    replica.record_own(model.update(vector, "soap", 1.0, "e2"), 1.0, 1001)
    batch = replica.take_batch()
    assert batch is not None
    decoded = decode_batch(encode_batch(batch))
    positives = [i for i, w in enumerate(decoded.weights.tolist()) if w > 0]
    assert [decoded.category(i) for i in positives] == ["dairy", None]
    negatives = [i for i, w in enumerate(decoded.weights.tolist()) if w == 0]
    assert negatives and all(decoded.category(i) is None for i in negatives)
    # a batch in the earlier format (no "~" mark, no category block) is still read
    old_text = base64.b64encode(base64.b64decode(encode_batch(batch)[1:])[: -_tail(batch)])
    old = decode_batch(old_text.decode())
    assert old.items == batch.items and old.category(positives[0]) is None


def _tail(batch: DeltaBatch) -> int:
    """Bytes the category block adds at the end of a batch's binary record."""
    return 4 + len("\x1f".join(batch.categories or []).encode())


def test_own_echo_does_not_apply_twice_and_shared_catches_up() -> None:
    model = _model()
    replica = ItemReplica(model.items, origin=0)
    _learn(model, replica, "u", ["a", "b", "a", "c"])
    local_before = model.items.factors.copy()
    batch = replica.take_batch()
    assert batch is not None
    replica.apply_published(decode_batch(encode_batch(batch)))
    np.testing.assert_array_equal(model.items.factors, local_before)
    assert replica.pending == {}
    for item in model.items.ids:
        np.testing.assert_allclose(
            replica.shared.factors[replica.shared.index[item]],
            model.items.factors[model.items.index[item]],
            rtol=1e-6,
            atol=1e-7,
        )


def test_two_replicas_converge_after_exchanging_deltas() -> None:
    left, right = _model(), _model()
    rep_l, rep_r = ItemReplica(left.items, 0), ItemReplica(right.items, 1)
    _learn(left, rep_l, "ann", ["a", "b", "c"])
    _learn(right, rep_r, "bob", ["c", "d"])
    log = [encode_batch(b) for b in (rep_l.take_batch(), rep_r.take_batch()) if b is not None]
    for text in log:  # every replica reads the whole log in the same order
        rep_l.apply_published(decode_batch(text))
        rep_r.apply_published(decode_batch(text))
    assert set(left.items.ids) == set(right.items.ids)
    for item in left.items.ids:
        np.testing.assert_allclose(
            left.items.factors[left.items.index[item]],
            right.items.factors[right.items.index[item]],
            rtol=1e-5,
            atol=1e-6,
        )


def test_restore_rebuilds_both_tables_from_persisted_entries() -> None:
    model = _model()
    replica = ItemReplica(model.items, 0)
    _learn(model, replica, "u", ["a", "b"])
    batch = replica.take_batch()
    assert batch is not None
    changed = replica.apply_published(batch)
    persisted = {item: replica.shared_entry(item) for item in changed}
    fresh = ItemReplica(_model().items, 0)
    for item, value in persisted.items():
        fresh.restore_entry(item, value)
    for item in persisted:
        np.testing.assert_array_equal(
            fresh.local.factors[fresh.local.index[item]],
            replica.shared.factors[replica.shared.index[item]],
        )


def test_a_full_table_refuses_items_without_failing() -> None:
    sender = ImplicitMF(n_factors=4, n_negatives=0)
    replica = ItemReplica(sender.items, 0)
    _learn(sender, replica, "u", ["a", "b", "c"])
    batch = replica.take_batch()
    assert batch is not None
    small = ImplicitMF(n_factors=4, n_negatives=0, max_items=2)
    receiver = ItemReplica(small.items, 1)
    receiver.shared.max_items = 2
    changed = receiver.apply_published(batch)
    assert changed == {"a", "b"} and receiver.refused == 1
    assert len(small.items) == 2
