"""The job's list refresh ranks with the repeat term exactly as the benchmarked strategy does,
the items' rebuy rates included (counted from the purchase marks the item deltas carry); a zero
term, or purchased items excluded, is the plain model without counts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from connectors.datasets import SyntheticShop
from flink_jobs.item_sync import ItemReplica, decode_batch, encode_batch
from flink_jobs.refresh import DirtyUser, build_lists
from flink_jobs.user_state import (
    UserState,
    decode_state,
    encode_state,
    purchase_mark,
    rebuy_rates,
)
from flywheel.settings import Settings, load_settings
from online_models.implicit_mf import ImplicitMF
from online_models.item_table import ItemTable
from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_term import RepeatTerm
from online_models.strategies import OnlineMFStrategy

REPEAT = {
    "repeat_weight": 2.0,
    "repeat_offset": -1.0,
    "repeat_discovery_slots": 2,
    "repeat_half_life_s": 86_400.0,
    "repeat_items_max": 40,
    "repeat_rebuy_weight": 1.5,
}


def _settings(**overrides: object) -> Settings:
    base = {"n_factors": 8, "top_n": 10, "cold_user_events": 1, "topn_index": "exact"}
    return load_settings(**{**base, **REPEAT, **overrides})


def _stream() -> list[dict]:
    shop = SyntheticShop(n_users=30, n_items=150, n_categories=6, seed=2, rate_per_s=1 / 600)
    return list(shop.events(3000))


JobSide = tuple[dict[str, UserState], ImplicitMF, ItemRebuyRates | None]


def _job_side(events: list[dict], settings: Settings) -> JobSide:
    """The keyed operator's per-event steps (purchase mark, features, one MF step, deltas
    recorded with the mark), without Flink; then the delta log read back, which counts the
    items' rebuy rates."""
    model = ImplicitMF(
        n_factors=settings.n_factors, learning_rate=settings.learning_rate, l2=settings.l2,
        n_negatives=settings.n_negatives, action_weights=settings.action_weights,
        init_std=settings.init_std, seed=settings.seed,
    )  # fmt: skip
    replica = ItemReplica(model.items, 0, rebuy_rates(settings))
    states: dict[str, UserState] = {}
    for e in events:
        user, item, action, ts = e["user_id"], e["item_id"], e["action"], e["ts"]
        state = states.setdefault(user, decode_state(None, settings))
        state.n_events += 1
        mark = purchase_mark(state.features, item, action)
        state.features.add(item, action, ts, e.get("category", ""))
        weight = model.weight_of(action)
        if weight > 0:
            if state.vector is None:
                state.vector = model.new_user_vector(user)
            deltas = model.update(state.vector, item, weight, f"{user}\x1f{item}\x1f{ts}")
            replica.record_own(deltas, weight, ts, "", mark)
    batch = replica.take_batch()
    if batch is not None:  # the echo: the local table is unchanged, the rates are counted
        replica.apply_published(decode_batch(encode_batch(batch)))
    # through the byte encoding, as the operator reads the state back
    states = {u: decode_state(encode_state(s), settings) for u, s in states.items()}
    return states, model, replica.rebuys


def _strategy_side(events: list[dict], settings: Settings) -> RepeatAwareStrategy:
    base = OnlineMFStrategy(
        n_factors=settings.n_factors, learning_rate=settings.learning_rate, l2=settings.l2,
        n_negatives=settings.n_negatives, action_weights=settings.action_weights,
        init_std=settings.init_std, seed=settings.seed,
    )  # fmt: skip
    term = RepeatTerm(
        settings.repeat_weight, settings.repeat_offset, settings.repeat_discovery_slots,
        settings.repeat_rebuy_weight,
    )  # fmt: skip
    strategy = RepeatAwareStrategy(
        base, term, settings.repeat_items_max, settings.repeat_half_life_s
    )
    for e in events:
        strategy.learn(e["user_id"], e["item_id"], e["action"], e["ts"])
    return strategy


def _owned(strategy: RepeatAwareStrategy, user: str) -> set[str]:
    counts = strategy.counts.get(user)
    return set(counts.entries) if counts else set()


def _job_lists(
    settings: Settings,
    states: dict[str, UserState],
    model: ImplicitMF,
    rebuys: ItemRebuyRates | None = None,
) -> dict:
    batch = {u: DirtyUser(s, s.features.max_ts) for u, s in states.items()}
    out = {}
    for user, strategy, value in build_lists(batch, model.items, [], settings, rebuys=rebuys):
        assert strategy == "online_mf"
        out[user] = [item for item, _ in orjson.loads(value)["items"]]
    return out


def test_job_lists_equal_the_benchmarked_strategy() -> None:
    settings = _settings(exclude_purchased=False)
    events = _stream()
    states, model, rebuys = _job_side(events, settings)
    strategy = _strategy_side(events, settings)
    users = sorted(states)
    # the marks the deltas carried gave the counts the strategy keeps (the same rule)
    assert rebuys is not None and rebuys.entries == strategy.rebuy.entries
    assert 0 < rebuys.rebuys < rebuys.purchases  # the stream has rebuys and first purchases
    job = _job_lists(settings, states, model, rebuys)
    expected = strategy.recommend(users, settings.top_n)
    assert [job[u] for u in users] == expected
    assert [_job_lists(settings, states, model)[u] for u in users] != expected  # rates matter
    for user, items in zip(users, expected, strict=True):
        counted = _owned(strategy, user)
        assert len(set(items) - counted) >= settings.repeat_discovery_slots
    assert sum(len(_owned(strategy, u)) for u in users) > 2 * len(users)  # the term had work


@pytest.mark.parametrize(("offset", "more_owned"), [(0.0, True), (-3.0, False)])
def test_offset_moves_lists_towards_or_away_from_the_users_own_items(
    offset: float, more_owned: bool
) -> None:
    settings = _settings(exclude_purchased=False, repeat_offset=offset, repeat_discovery_slots=0)
    events = _stream()
    states, model, _ = _job_side(events, settings)
    strategy = _strategy_side(events, settings)
    users = sorted(states)
    job = _job_lists(settings, states, model)
    plain = strategy.base.recommend(users, settings.top_n)
    owned = [_owned(strategy, u) for u in users]
    with_term = sum(len(set(job[u]) & o) for u, o in zip(users, owned, strict=True))
    without = sum(len(set(p) & o) for p, o in zip(plain, owned, strict=True))
    assert (with_term > without) is more_owned, (with_term, without)


@pytest.mark.parametrize(
    "off",
    [
        {
            "repeat_weight": 0.0,
            "repeat_offset": 0.0,
            "repeat_discovery_slots": 0,
            "repeat_rebuy_weight": 0.0,
        },
        {"exclude_purchased": True},  # purchased items are never listed: nothing to lift
    ],
)
def test_term_off_is_the_plain_model_and_keeps_no_counts(off: dict) -> None:
    settings = _settings(**{"exclude_purchased": False, **off})
    events = _stream()
    states, model, rebuys = _job_side(events, settings)
    assert rebuys is None  # no rates kept either
    assert all(len(s.features.repeats) == 0 for s in states.values())
    assert all("repeats" not in s.features.to_dict() for s in states.values())
    job = _job_lists(settings, states, model)
    plain = OnlineMFStrategy(
        n_factors=settings.n_factors, action_weights=settings.action_weights, seed=settings.seed
    )
    for e in events:
        plain.learn(e["user_id"], e["item_id"], e["action"], e["ts"])
    users = sorted(states)
    skip = [
        set(states[u].features.purchased) if settings.exclude_purchased else set() for u in users
    ]
    assert [job[u] for u in users] == plain.recommend(users, settings.top_n, skip)


def test_features_view_shows_the_counts_the_refresh_reads() -> None:
    settings = _settings(repeat_half_life_s=0.0, exclude_purchased=False)
    state = decode_state(None, settings)
    for action in ("purchase", "purchase", "add_to_cart", "impression"):
        state.features.add("milk", action, 1_700_000_000_000, "dairy")
    state.features.add("tea", "view", 1_700_000_000_000, "")
    state.features.add("jam", "purchase", 1_700_000_000_000, "")
    view = DirtyUser(state, 0).features()
    assert view["repeats"] == {"milk": 2.0, "jam": 1.0}  # purchases only
    back = decode_state(encode_state(state), settings)
    assert back.features.repeats.counts() == state.features.repeats.counts()


@pytest.mark.parametrize("rebought", ["milk", "cake"])
def test_the_item_other_users_rebuy_ranks_above_an_otherwise_equal_one(rebought: str) -> None:
    """The user bought milk and cake once each; both have the same factors and bias, so only
    the rebuy term tells them apart, by its weight times the gap of their logits."""
    settings = _settings(exclude_purchased=False, repeat_rebuy_weight=2.0)
    items = ItemTable(settings.n_factors, settings.init_std, settings.seed)
    for item in ("milk", "cake"):
        items.ensure(item)
        items.factors[items.index[item]] = 0.1
    state = decode_state(None, settings)
    state.vector = np.ones(settings.n_factors, np.float32)
    for item in ("milk", "cake"):
        state.n_events += 1
        state.features.add(item, "purchase", 1_700_000_000_000)
    rates = ItemRebuyRates()
    for item in ("milk", "cake"):  # others: the rebought item twice each, the other once
        for _ in range(10):
            rates.add(item, False)
            if item == rebought:
                rates.add(item, True)
    batch = {"ann": DirtyUser(state, 0)}
    ((_, _, value),) = build_lists(batch, items, [], settings, rebuys=rates)
    ranked = orjson.loads(value)["items"]
    assert ranked[0][0] == rebought
    other = "cake" if rebought == "milk" else "milk"
    gap = ranked[0][1] - ranked[1][1]
    logits = rates.logits([rebought, other])
    assert gap == pytest.approx(2.0 * float(logits[0] - logits[1]), abs=1e-4)
    ((_, _, without),) = build_lists(batch, items, [], settings)  # no rates counted yet: a tie
    first, second = (score for _, score in orjson.loads(without)["items"])
    assert first == second
