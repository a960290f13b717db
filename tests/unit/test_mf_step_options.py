"""The online MF's optional step rules: a user step shrinking with the user's history, and a
separate learning weight for rebought items."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from connectors.datasets import SyntheticShop
from online_models.evaluation import evaluate, events_from_dicts
from online_models.implicit_mf import ImplicitMF
from online_models.strategies import OnlineMFStrategy


def _catalogue(model: ImplicitMF, n: int = 20) -> None:
    for i in range(n):
        model.items.ensure(f"i{i}")


@pytest.mark.parametrize("seen", [0, 3, 40])
def test_user_step_shrinks_with_the_users_history_and_items_step_as_before(seen: int) -> None:
    plain = ImplicitMF(n_factors=8, n_negatives=3, seed=3, learning_rate=0.1)
    damped = ImplicitMF(n_factors=8, n_negatives=3, seed=3, learning_rate=0.1, user_step_events=4)
    _catalogue(plain)
    _catalogue(damped)
    start = plain.new_user_vector("u")
    u_plain, u_damped = start.copy(), start.copy()
    d_plain = plain.update(u_plain, "i4", 4.0, "e9", user_events=seen)
    d_damped = damped.update(u_damped, "i4", 4.0, "e9", user_events=seen)
    assert d_plain.items == d_damped.items
    np.testing.assert_array_equal(d_plain.factors, d_damped.factors)
    np.testing.assert_array_equal(plain.items.factors, damped.items.factors)
    scale = 1.0 / np.sqrt(1.0 + seen / 4)
    np.testing.assert_allclose(u_damped - start, scale * (u_plain - start), rtol=1e-5, atol=1e-7)
    assert damped.user_step_scale(seen) == pytest.approx(scale)


def _replay(model: ImplicitMF, n: int = 600) -> None:
    rng = np.random.default_rng(7)
    for e in range(n):
        user, item = f"u{rng.integers(0, 12)}", f"i{rng.integers(0, 30)}"
        model.learn_one(user, item, x={"action": "purchase", "key": f"e{e}"})


def test_learn_one_counts_each_users_events_and_a_replay_is_bit_identical() -> None:
    a, b = (ImplicitMF(n_factors=8, seed=5, user_step_events=10) for _ in range(2))
    _replay(a)
    _replay(b)
    np.testing.assert_array_equal(a.items.factors, b.items.factors)
    for user, vector in a.users.items():
        np.testing.assert_array_equal(vector, b.users[user])
    assert sum(a.user_events.values()) == 600
    plain = ImplicitMF(n_factors=8, seed=5)
    _replay(plain)
    assert not plain.user_events
    assert not np.array_equal(plain.users["u0"], a.users["u0"])
    # a long history keeps the damped user vectors nearer their start than the plain ones
    moved = [np.linalg.norm(m.users["u0"] - m.new_user_vector("u0")) for m in (a, plain)]
    assert moved[0] < moved[1]


def test_negative_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="user_step_events"):
        ImplicitMF(user_step_events=-1)
    with pytest.raises(ValueError, match="rebuy_learn_weight"):
        OnlineMFStrategy(rebuy_learn_weight=-0.5)


def _factors(strategy: OnlineMFStrategy) -> np.ndarray:
    return strategy.model.items.factors.copy()


def test_rebuy_learn_weight_scales_only_purchases_of_items_bought_before() -> None:
    params: dict[str, Any] = {"n_factors": 4, "seed": 2, "n_negatives": 2}
    first_only = OnlineMFStrategy(**params)
    skipped = OnlineMFStrategy(rebuy_learn_weight=0.0, **params)
    halved = OnlineMFStrategy(rebuy_learn_weight=0.5, **params)
    events = [("ann", "milk", 1), ("ann", "tea", 2), ("bob", "milk", 3), ("ann", "milk", 4)]
    for user, item, ts in events:
        for s in (skipped, halved):
            s.learn(user, item, "purchase", ts)
        if ts != 4:  # ann's second milk is the only rebuy
            first_only.learn(user, item, "purchase", ts)
    np.testing.assert_array_equal(_factors(skipped), _factors(first_only))
    np.testing.assert_array_equal(skipped.model.users["ann"], first_only.model.users["ann"])
    assert not np.array_equal(_factors(halved), _factors(first_only))
    # the rebuy is learnt with half the purchase weight
    direct = OnlineMFStrategy(**params)
    for user, item, ts in events[:3]:
        direct.learn(user, item, "purchase", ts)
    weight = direct.model.weight_of("purchase") / 2
    direct.model.learn_one("ann", "milk", weight, {"key": "ann\x1fmilk\x1f4"})
    np.testing.assert_array_equal(_factors(halved), _factors(direct))
    # popularity still counts every purchase in full
    assert halved.trending.top_ids(1) == ["milk"] == skipped.trending.top_ids(1)


def test_a_prequential_replay_with_both_options_is_deterministic() -> None:
    shop = SyntheticShop(n_users=30, n_items=120, n_categories=6, seed=3, rate_per_s=1 / 60)
    events = events_from_dicts(shop.events(1500))

    def run() -> tuple[float, float, np.ndarray]:
        strategy = OnlineMFStrategy(
            n_factors=8, seed=1, learning_rate=0.1, user_step_events=5, rebuy_learn_weight=0.5
        )
        report = evaluate(strategy, events, k=10, batch=32)
        return report.slice("all").hr, report.slice("repeat").hr, _factors(strategy)

    first, second = run(), run()
    assert first[:2] == second[:2]
    np.testing.assert_array_equal(first[2], second[2])
