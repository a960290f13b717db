"""The prequential evaluator: hand-computed hits, ranks and NDCG; micro-batches; the splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online_models.cooccurrence import CoOccurrenceStrategy
from online_models.evaluation import Event, Tally, evaluate
from online_models.strategies import PopularityStrategy


class Scripted:
    """Always the same list per user; records what it was asked and taught."""

    name = "scripted"

    def __init__(self, lists: dict[str, list[str]]):
        self.lists = lists
        self.asked: list[tuple[list[str], list[set[str]] | None]] = []
        self.learnt: list[str] = []

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        self.asked.append((list(users), exclude))
        return [self.lists.get(u, [])[:k] for u in users]

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        self.learnt.append(item)


def _ev(user: str, item: str, ts: int, action: str = "purchase") -> Event:
    return Event(user, item, action, ts)


def test_hits_ranks_ndcg_and_mrr_by_hand() -> None:
    strategy = Scripted({"u": ["a", "b", "c"]})
    stream = [_ev("u", "z", 0), _ev("u", "a", 1), _ev("u", "c", 2), _ev("u", "q", 3)]
    report = evaluate(strategy, stream, k=3, batch=1)
    # event 0 is cold (no earlier event of u); then ranks 1, 3 and a miss
    assert report.slices["cold"].n == 1
    tally = report.slices["all"]
    assert (tally.n, tally.hits) == (3, 2)
    assert tally.ndcg == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)
    assert tally.mrr == pytest.approx((1.0 + 1.0 / 3) / 3)
    assert strategy.learnt == ["z", "a", "c", "q"]


def test_list_is_cut_at_k() -> None:
    strategy = Scripted({"u": ["a", "b", "c"]})
    report = evaluate(strategy, [_ev("u", "a", 0), _ev("u", "c", 1)], k=2, batch=1)
    assert report.slices["all"].hits == 0


def test_repeat_and_first_time_split() -> None:
    strategy = Scripted({"u": ["a", "b"]})
    stream = [_ev("u", "a", 0), _ev("u", "a", 1), _ev("u", "b", 2), _ev("u", "x", 3)]
    report = evaluate(strategy, stream, k=2, batch=1)
    assert (report.slices["repeat"].n, report.slices["repeat"].hits) == (1, 1)
    assert (report.slices["first_time"].n, report.slices["first_time"].hits) == (2, 1)
    metrics = report.metrics()
    assert metrics["hr@2_repeat"] == 1.0 and metrics["hr@2_first_time"] == 0.5


def test_coverage_counts_distinct_recommended_over_distinct_seen() -> None:
    strategy = Scripted({"u": ["a", "b"], "v": ["b", "c"]})
    stream = [_ev("u", "a", 0), _ev("v", "d", 1), _ev("u", "e", 2), _ev("v", "f", 3)]
    report = evaluate(strategy, stream, k=2, batch=1)
    # lists shown: u -> a, b (3 times incl. cold) and v -> b, c: {a, b, c} of {a, d, e, f}
    assert report.coverage == pytest.approx(3 / 4)


def test_actions_and_start_time_select_scored_events() -> None:
    strategy = Scripted({"u": ["a"]})
    stream = [_ev("u", "a", 0), _ev("u", "a", 1, "view"), _ev("u", "a", 2), _ev("u", "a", 3)]
    report = evaluate(strategy, stream, k=1, batch=1, score_actions=["purchase"], score_from_ts=3)
    assert report.slices["all"].n == 1 and "cold" not in report.slices
    assert strategy.learnt == ["a"] * 4  # every event is learnt, scored or not


def test_micro_batch_asks_each_user_once_from_the_state_before_the_batch() -> None:
    stream = [_ev("u", "a", 0), _ev("v", "a", 1), _ev("u", "b", 2), _ev("u", "c", 3)]
    strategy = Scripted({})
    evaluate(strategy, stream, k=2, batch=4, exclude_seen=True)
    assert strategy.asked == [(["u", "v"], [set(), set()])]
    strategy = Scripted({})
    evaluate(strategy, stream, k=2, batch=2, exclude_seen=True)
    assert strategy.asked[1] == (["u"], [{"a"}])


def test_batch_of_one_is_exact_test_then_train() -> None:
    rng = np.random.default_rng(3)
    stream = [
        _ev(f"u{rng.integers(0, 8)}", f"i{rng.integers(0, 12)}", t, "purchase") for t in range(400)
    ]
    for make in (PopularityStrategy, CoOccurrenceStrategy):
        reference, strategy = Tally(), make()
        seen: set[str] = set()
        for e in stream:
            ranked = strategy.recommend([e.user], 5)[0]
            if e.user in seen:
                reference.add(ranked.index(e.item) + 1 if e.item in ranked else 0)
            strategy.learn(e.user, e.item, e.action, e.ts)
            seen.add(e.user)
        report = evaluate(make(), stream, k=5, batch=1)
        assert report.slices["all"] == reference
        batched = evaluate(make(), stream, k=5, batch=64)
        assert batched.slices["all"].n == reference.n


def test_exclusion_hides_the_users_items() -> None:
    stream = [_ev("w", "b", 0), _ev("u", "a", 1), _ev("u", "a", 2), _ev("v", "a", 3)]
    stream.append(_ev("v", "b", 4))
    report = evaluate(PopularityStrategy(), stream, k=1, batch=1, exclude_seen=True)
    # u's repeat of a cannot hit when a is excluded; v's b is hit (a excluded, b next)
    assert (report.slices["repeat"].n, report.slices["repeat"].hits) == (1, 0)
    assert (report.slices["first_time"].n, report.slices["first_time"].hits) == (1, 1)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        evaluate(PopularityStrategy(), [], batch=0)
