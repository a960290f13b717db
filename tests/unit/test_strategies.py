"""Every strategy learns a planted pattern better than chance; their bounds and contracts."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from connectors.datasets import SyntheticShop
from online_models.batch_als import BatchALSStrategy
from online_models.cooccurrence import CoOccurrenceStrategy
from online_models.evaluation import Event, evaluate, events_from_dicts
from online_models.repeat_mf import RepeatAwareMFStrategy
from online_models.strategies import (
    OnlineMFStrategy,
    PopularityStrategy,
    RiverMFStrategy,
    Strategy,
)

HOUR_S = 3600


class RandomStrategy:
    """Uniform random lists over the items seen so far (the chance level)."""

    name = "random"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.known: set[str] = set()
        self.rng = random.Random(0)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        return [self.rng.sample(self.items, min(k, len(self.items))) for _ in users]

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        if item not in self.known:
            self.known.add(item)
            self.items.append(item)


@pytest.fixture(scope="module")
def planted() -> list[Event]:
    """Shoppers with hidden tastes over 10 categories of 400 items; one event a minute."""
    shop = SyntheticShop(n_users=80, n_items=400, n_categories=10, seed=4, rate_per_s=1 / 60)
    return events_from_dicts(shop.events(5000))


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "popularity": lambda: PopularityStrategy(window_s=24 * HOUR_S),
    "cooccurrence": lambda: CoOccurrenceStrategy(),
    "online_mf": lambda: OnlineMFStrategy(n_factors=16, learning_rate=0.1, seed=1),
    "online_mf_repeat": lambda: RepeatAwareMFStrategy(4.0, n_factors=16, learning_rate=0.1),
    "river_biasedmf": lambda: RiverMFStrategy("biased", candidates=100),
    "river_funkmf": lambda: RiverMFStrategy("funk", candidates=100),
    "batch_als": lambda: BatchALSStrategy(retrain_every_s=HOUR_S, factors=8, iterations=3),
}


def test_every_strategy_beats_chance(planted: list[Event]) -> None:
    chance = evaluate(RandomStrategy(), planted, batch=16).slice("all").hr
    for name, make in STRATEGIES.items():
        hr = evaluate(make(), planted, batch=16).slice("all").hr
        assert hr > 1.5 * chance, f"{name}: HR@10 {hr:.3f} vs chance {chance:.3f}"


def test_personal_models_beat_popularity_on_tastes(planted: list[Event]) -> None:
    popular = evaluate(STRATEGIES["popularity"](), planted, batch=16).slice("all").hr
    for name in ("cooccurrence", "batch_als"):
        hr = evaluate(STRATEGIES[name](), planted, batch=16).slice("all").hr
        assert hr > popular, f"{name}: HR@10 {hr:.3f} vs popularity {popular:.3f}"


def test_repeat_term_ranks_the_users_own_items_higher(planted: list[Event]) -> None:
    plain = evaluate(STRATEGIES["online_mf"](), planted, batch=16).slice("repeat").hr
    repeat = evaluate(STRATEGIES["online_mf_repeat"](), planted, batch=16).slice("repeat").hr
    assert repeat > plain
    capped = RepeatAwareMFStrategy(max_counted=3)
    for e in planted:
        capped.learn(e.user, e.item, e.action, e.ts)
    assert max(len(c) for c in capped.counted.values()) == 3


def test_discovery_slots_hold_items_new_to_the_user(planted: list[Event]) -> None:
    strategy = RepeatAwareMFStrategy(8.0, discovery_slots=3, n_factors=8)
    for e in planted[:2000]:
        strategy.learn(e.user, e.item, e.action, e.ts)
    users = sorted(strategy.counted)[:10]
    for user, ranked in zip(users, strategy.recommend(users, 10), strict=True):
        assert len(ranked) == 10 and not set(ranked[7:]) & set(strategy.counted[user])


def test_cooccurrence_memory_bound_holds(planted: list[Event]) -> None:
    co = CoOccurrenceStrategy(recent=10, max_neighbours=5)
    for e in planted:
        co.learn(e.user, e.item, e.action, e.ts)
        assert max(len(n) for n in co.neighbours.values()) <= 10
    assert co.size() <= 2 * 5 * len(co.neighbours)
    assert all(len(r) <= 10 for r in co.recent.values())


def test_river_scores_equal_predict_one(planted: list[Event]) -> None:
    for kind in ("biased", "funk"):
        river = RiverMFStrategy(kind)
        for e in planted[:500]:
            river.learn(e.user, e.item, e.action, e.ts)
        user, items = planted[0].user, sorted({e.item for e in planted[:500]})[:20]
        expected = [river.model.predict_one(user, i) for i in items]
        assert river.scores(user, items).tolist() == pytest.approx(expected)


def test_batch_model_only_knows_events_before_its_last_boundary() -> None:
    als = BatchALSStrategy(retrain_every_s=HOUR_S, factors=4, iterations=2)
    hour = HOUR_S * 1000
    for t, (user, item) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")]):
        als.learn(user, item, "purchase", t * hour // 2)  # 0, 0.5 h, 1 h, 1.5 h
    als.recommend(["a"], 2)
    assert als.trainings == 1 and als._user_factors.shape[0] == 1  # only a, before 1 h
    als.recommend(["a"], 2)
    assert als.trainings == 1  # same boundary: no retrain
    als.learn("c", "x", "purchase", 2 * hour)
    assert als.recommend(["b", "c"], 2)[1] == ["x", "y"]  # c is new: popularity
    assert als.trainings == 2


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_exclusions_are_respected_and_lists_are_full(name: str, planted: list[Event]) -> None:
    strategy = STRATEGIES[name]()
    for e in planted[:1500]:
        strategy.learn(e.user, e.item, e.action, e.ts)
    users = [*sorted({e.user for e in planted[:1500]})[:5], "nobody"]
    skip = [{e.item for e in planted[:1500] if e.user == u} for u in users]
    lists = strategy.recommend(users, 10, skip)
    for ranked, excluded in zip(lists, skip, strict=True):
        assert len(ranked) == 10 and len(set(ranked)) == 10 and not set(ranked) & excluded
