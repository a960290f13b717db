"""Item-table replicas stay consistent through the shared delta log, and count the same item
rebuy rates from the purchase marks it carries."""

from __future__ import annotations

import base64

import numpy as np

from flink_jobs.item_sync import (
    FIRST_PURCHASE,
    REBUY,
    DeltaBatch,
    ItemReplica,
    decode_batch,
    encode_batch,
)
from online_models.implicit_mf import ImplicitMF
from online_models.rebuy_rates import ItemRebuyRates


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
    """Bytes the category block and the purchase marks add at the end of a batch's record."""
    return 4 + len("\x1f".join(batch.categories or []).encode()) + len(batch.items)


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
    persisted = replica.shared_entries(changed)
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


def test_purchase_marks_round_trip_and_batches_without_them_still_decode() -> None:
    model = _model()
    replica = ItemReplica(model.items, origin=2)
    vector = model.new_user_vector("u")
    marks = {"milk": REBUY, "soap": 0, "tea": FIRST_PURCHASE}
    for i, (item, mark) in enumerate(marks.items()):
        replica.record_own(model.update(vector, item, 1.0, f"e{i}"), 1.0, 1000 + i, "c", mark)
    batch = replica.take_batch()
    assert batch is not None and batch.purchases is not None
    decoded = decode_batch(encode_batch(batch))
    assert decoded.purchases is not None
    positives = [i for i, w in enumerate(decoded.weights.tolist()) if w > 0]
    assert [int(decoded.purchases[i]) for i in positives] == list(marks.values())
    assert int(decoded.purchases.sum()) == REBUY + FIRST_PURCHASE  # negatives carry no mark
    # the previous format ("~": categories, no purchase marks) is still read
    body = base64.b64decode(encode_batch(batch)[1:])[: -len(batch.items)]
    previous = decode_batch("~" + base64.b64encode(body).decode())
    assert previous.items == batch.items and previous.purchases is None
    assert [previous.category(i) for i in positives] == ["c"] * 3


def _purchases(replica: ItemReplica, model: ImplicitMF, user: str, bought: list[str]) -> None:
    """``user`` buys ``bought`` in order; a repeated item is a rebuy."""
    vector = model.new_user_vector(user)
    for i, item in enumerate(bought):
        mark = REBUY if item in bought[:i] else FIRST_PURCHASE
        replica.record_own(model.update(vector, item, 1.0, f"{user}-{i}"), 1.0, 1000 + i, "", mark)


def test_every_replica_counts_the_same_rebuys_from_the_log_and_persists_them() -> None:
    left, right, plain = _model(), _model(), _model()
    rep_l = ItemReplica(left.items, 0, ItemRebuyRates())
    rep_r = ItemReplica(right.items, 1, ItemRebuyRates())
    rep_p = ItemReplica(plain.items, 2)  # the term does not weigh rebuy rates: none kept
    _purchases(rep_l, left, "ann", ["milk", "milk", "cake"])
    _purchases(rep_r, right, "bob", ["milk", "milk", "milk"])
    assert rep_l.rebuys is not None and rep_r.rebuys is not None
    assert len(rep_l.rebuys) == 0  # own purchases count when they come back from the log
    log = [encode_batch(b) for b in (rep_l.take_batch(), rep_r.take_batch()) if b is not None]
    for text in log:
        for replica in (rep_l, rep_r, rep_p):
            replica.apply_published(decode_batch(text))
    assert rep_l.rebuys.entries == rep_r.rebuys.entries == {"milk": [5, 3], "cake": [1, 0]}
    assert (rep_l.rebuys.purchases, rep_l.rebuys.rebuys) == (6, 3)
    assert rep_p.rebuys is None
    # persisted with each item's factors; a restored replica resumes with the same counts
    persisted = rep_l.shared_entries(rep_l.shared.ids)
    fresh = ItemReplica(_model().items, 0, ItemRebuyRates())
    for item, value in persisted.items():
        fresh.restore_entry(item, value)
    assert fresh.rebuys is not None and fresh.rebuys.entries == rep_l.rebuys.entries
    assert (fresh.rebuys.purchases, fresh.rebuys.rebuys) == (6, 3)
    np.testing.assert_array_equal(
        fresh.rebuys.logits(["milk", "cake", "tea"]), rep_l.rebuys.logits(["milk", "cake", "tea"])
    )
    # an entry persisted without counts (before they were kept) restores the factors only
    k = rep_p.shared.n_factors
    old = ItemReplica(_model().items, 0, ItemRebuyRates())
    old.restore_entry("milk", rep_p.shared_entry("milk"))
    assert len(rep_p.shared_entry("milk")) == 4 * (k + 1) and len(old.rebuys or ()) == 0
    np.testing.assert_array_equal(
        old.local.factors[old.local.index["milk"]],
        rep_p.shared.factors[rep_p.shared.index["milk"]],
    )
