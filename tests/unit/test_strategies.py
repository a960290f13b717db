"""Every strategy learns a planted pattern better than chance; their bounds and contracts."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import pytest

from connectors.datasets import SyntheticShop
from online_models.batch_als import BatchALSStrategy
from online_models.cooccurrence import CoOccurrenceStrategy
from online_models.evaluation import Event, evaluate, evaluate_variants, events_from_dicts
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_term import RepeatTerm
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
    "online_mf_repeat": lambda: RepeatAwareStrategy(
        OnlineMFStrategy(n_factors=16, learning_rate=0.1), RepeatTerm(4.0)
    ),
    "batch_als_repeat": lambda: RepeatAwareStrategy(
        BatchALSStrategy(retrain_every_s=HOUR_S, factors=8, iterations=3), RepeatTerm(1.0, -0.5, 2)
    ),
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
    capped = RepeatAwareStrategy(OnlineMFStrategy(), RepeatTerm(1.0), max_items=3)
    for e in planted:
        capped.learn(e.user, e.item, e.action, e.ts)
    assert max(len(c) for c in capped.counts.values()) == 3


def test_discovery_slots_hold_items_new_to_the_user(planted: list[Event]) -> None:
    strategy = RepeatAwareStrategy(OnlineMFStrategy(n_factors=8), RepeatTerm(8.0, 0.0, 3))
    for e in planted[:2000]:
        strategy.learn(e.user, e.item, e.action, e.ts)
    users = sorted(strategy.counts)[:10]
    for user, ranked in zip(users, strategy.recommend(users, 10), strict=True):
        owned = set(strategy.counts[user].entries)
        assert len(ranked) == 10 and len(set(ranked) - owned) >= 3


def test_ranking_several_terms_in_one_pass_equals_separate_runs(planted: list[Event]) -> None:
    terms = [RepeatTerm(), RepeatTerm(2.0, -1.0, 2), RepeatTerm(8.0)]
    shared = RepeatAwareStrategy(OnlineMFStrategy(n_factors=8, seed=1), RepeatTerm())
    reports = evaluate_variants(
        shared,
        functools.partial(shared.recommend_terms, terms=terms),
        [str(t) for t in terms],
        planted,
        batch=16,
    )
    for term, report in zip(terms, reports, strict=True):
        alone = RepeatAwareStrategy(OnlineMFStrategy(n_factors=8, seed=1), term)
        single = evaluate(alone, planted, batch=16)
        assert report.slices == single.slices, term
    assert (
        reports[0].slices
        == evaluate(OnlineMFStrategy(n_factors=8, seed=1), planted, batch=16).slices
    )


def test_batch_repeat_lists_items_bought_after_the_last_training() -> None:
    als = RepeatAwareStrategy(
        BatchALSStrategy(retrain_every_s=HOUR_S, factors=4, iterations=2), RepeatTerm(5.0)
    )
    hour = HOUR_S * 1000
    for t, (user, item) in enumerate([("a", "x"), ("b", "y"), ("a", "y"), ("a", "new")]):
        als.learn(user, item, "purchase", t * hour // 2)  # "new" arrives after the boundary
    ranked = als.recommend(["a"], 3)[0]
    assert ranked[0] == "new" or "new" in ranked[:3]
    assert als.base.item_index["new"] >= als.base._item_factors.shape[0]  # unknown to ALS


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
