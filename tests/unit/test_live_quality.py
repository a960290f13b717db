"""Live prequential quality: the same per-event scores as the offline evaluator, unknown lists
counted apart, bounded served-list memory and a trailing coverage window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online_models.evaluation import Event, Tally, evaluate
from online_models.live_quality import (
    PERSONAL,
    POPULARITY,
    CoverageWindow,
    LiveQuality,
    ServedLists,
)


class Fixed:
    """A strategy whose lists never change (so offline and live see the same lists)."""

    name = "fixed"

    def __init__(self, lists: dict[str, list[str]]):
        self.lists = lists

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        return [self.lists[u][:k] for u in users]

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        pass


def test_live_scores_equal_the_offline_evaluator_on_the_same_lists() -> None:
    rng = np.random.default_rng(7)
    users = [f"u{i}" for i in range(6)]
    items = [f"i{i}" for i in range(15)]
    lists = {u: list(rng.permutation(items)[:8]) for u in users}
    stream = [
        Event(str(rng.choice(users)), str(rng.choice(items)), "purchase", t) for t in range(500)
    ]
    offline = evaluate(Fixed(lists), stream, k=5, batch=1)

    live = LiveQuality(k=5, users_max=100)
    for user, ranked in lists.items():
        live.personal(user, ranked, now_s=0)
    history: dict[str, set[str]] = {}
    for event in stream:  # test, then "learn" (remember the item)
        live.test(event.user, event.item, history.get(event.user))
        history.setdefault(event.user, set()).add(event.item)
    tallies, unscored = live.drain()

    assert unscored[PERSONAL] == 0
    for split in ("repeat", "first_time", "cold"):
        assert tallies[(PERSONAL, split)] == offline.slices.get(split, Tally()), split
    assert offline.slices["repeat"].hits and offline.slices["first_time"].hits  # not vacuous


def test_hits_and_ndcg_by_hand_for_both_strategies() -> None:
    live = LiveQuality(k=3, users_max=10)
    live.personal("u", ["a", "b", "c", "d"], now_s=0)
    live.trending(["d", "c"], now_s=0)
    live.test("u", "c", prior={"c"})  # personal rank 3 (repeat); trending rank 2
    live.test("u", "d", prior={"c"})  # personal: d is 4th, cut at K=3; trending rank 1
    tallies, unscored = live.drain()
    personal = tallies[(PERSONAL, "repeat")]
    assert (personal.n, personal.hits, personal.dcg) == (1, 1, pytest.approx(0.5))
    assert tallies[(PERSONAL, "first_time")] == Tally(1, 0, 0.0, 0.0)
    popular = tallies[(POPULARITY, "repeat")]
    assert (popular.hits, popular.dcg) == (1, pytest.approx(1 / math.log2(3)))
    assert tallies[(POPULARITY, "first_time")].dcg == pytest.approx(1.0)
    assert unscored == {PERSONAL: 0, POPULARITY: 0}


def test_unknown_or_empty_lists_are_unscored_not_misses() -> None:
    live = LiveQuality(k=10, users_max=10)
    live.test("u", "a", prior=set())  # nothing written yet (e.g. after a restore)
    live.trending([], now_s=0)
    live.personal("v", [], now_s=0)
    live.test("v", "a", prior=set())
    tallies, unscored = live.drain()
    assert unscored == {PERSONAL: 2, POPULARITY: 2}
    assert sum(t.n for t in tallies.values()) == 0


def test_the_latest_list_counts_and_forget_drops_it() -> None:
    live = LiveQuality(k=2, users_max=10)
    live.personal("u", ["a", "b"], now_s=0)
    live.personal("u", ["c", "d"], now_s=1)
    live.test("u", "a", prior=set())
    assert live.drain()[0][(PERSONAL, "first_time")].hits == 0
    live.forget("u")
    live.test("u", "c", prior=set())
    assert live.drain()[1][PERSONAL] == 1


def test_served_lists_keep_the_most_recently_written_users() -> None:
    lists = ServedLists(users_max=2)
    lists.put("a", ("x",))
    lists.put("b", ("y",))
    lists.put("a", ("z",))  # rewritten: a is now the most recent
    lists.put("c", ("w",))
    assert (lists.get("a"), lists.get("b"), lists.get("c")) == (("z",), None, ("w",))
    off = ServedLists(users_max=0)
    off.put("a", ("x",))
    assert off.get("a") is None and len(off) == 0


def test_coverage_window_counts_distinct_items_and_forgets_old_ones() -> None:
    window = CoverageWindow(window_s=10)
    live = LiveQuality(k=2, users_max=10, coverage={PERSONAL: window})
    live.personal("u", ["a", "b", "c"], now_s=0)  # K=2: a, b
    live.personal("v", ["b", "d"], now_s=5)
    assert window.distinct(now_s=9) == 3
    live.personal("u", ["a", "e"], now_s=12)  # a recommended again: it stays
    assert window.distinct(now_s=12) == 4  # a, b, d, e (a's time moved on to 12)
    assert window.distinct(now_s=15.5) == 2  # b and d (last shown at 5) left; a and e stay
    live.trending(["z"], now_s=16)  # no window given for popularity: ignored
    assert window.distinct(now_s=16) == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        LiveQuality(k=0, users_max=1)
    with pytest.raises(ValueError):
        ServedLists(users_max=-1)
    with pytest.raises(ValueError):
        CoverageWindow(window_s=0)
