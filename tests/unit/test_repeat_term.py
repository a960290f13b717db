"""The repeat term: bounded decaying counts, and lists equal to a dense top-N of
``model score + sparse repeat term`` through every retrieval path."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.candidates import ClusteredIndex
from online_models.repeat_counts import RepeatCounts
from online_models.repeat_term import RepeatTerm, merge_batch, merge_repeats, rank_with_repeats
from online_models.topn import top_n

DAY_MS = 86_400_000


def test_counts_are_bounded_and_least_recently_touched_goes_first() -> None:
    counts = RepeatCounts(max_items=3)
    for item in ["a", "b", "c", "a", "d"]:
        counts.add(item, 1.0, 0)
    items, values = counts.counts()
    assert items == ["c", "a", "d"] and values == [1.0, 2.0, 1.0]
    counts.add("x", 0.0, 0)  # zero weight: nothing counted
    assert len(counts) == 3 and "x" not in counts.entries


def test_decay_halves_a_count_per_half_life_at_the_users_latest_event() -> None:
    counts = RepeatCounts(half_life_s=30 * 86_400)
    counts.add("milk", 1.0, 0)
    counts.add("tea", 1.0, 30 * DAY_MS)
    counts.add("tea", 1.0, 60 * DAY_MS)
    items, values = counts.counts()
    assert items == ["milk", "tea"]
    assert values == pytest.approx([0.25, 1.5])


def test_decay_survives_years_and_state_round_trips_exactly() -> None:
    counts = RepeatCounts(max_items=5, half_life_s=86_400)
    for day in range(0, 400, 7):  # 57 weeks: the reference is moved forward on the way
        counts.add(f"i{day % 3}", 1.0, day * DAY_MS)
    assert counts.ref_ts > 0
    _, values = counts.counts()
    assert max(values) == pytest.approx(1 / (1 - 2 ** (-21)), rel=1e-6)  # every 3rd week
    back = RepeatCounts(max_items=5, half_life_s=86_400).load(counts.to_list())
    assert back.counts() == counts.counts() and back.last_ts == counts.last_ts
    smaller = RepeatCounts(max_items=2, half_life_s=86_400).load(counts.to_list())
    assert smaller.counts()[0] == counts.counts()[0][-2:]  # a lower bound keeps the newest
    assert RepeatCounts().load([]).counts() == ([], [])


def _dense(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    counted: list[tuple[np.ndarray, np.ndarray]],
    exclude: list[list[int]],
) -> np.ndarray:
    """Reference: the full score rows plus the sparse term, excluded rows at -inf."""
    scores = users @ factors.T + bias
    for j, (rows, values) in enumerate(counted):
        scores[j, rows] += values
        scores[j, exclude[j]] = -np.inf
    return scores


Case = tuple[
    np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[list[int]]
]


def _random_case(seed: int, n_items: int = 300, n_users: int = 12, k: int = 8) -> Case:
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_items, k)).astype(np.float32)
    bias = rng.normal(size=n_items).astype(np.float32)
    users = rng.normal(size=(n_users, k)).astype(np.float32)
    counted, exclude = [], []
    for _ in range(n_users):
        rows = rng.choice(n_items, size=int(rng.integers(0, 40)), replace=False)
        excluded = rng.choice(n_items, size=int(rng.integers(0, 10)), replace=False)
        rows = np.setdiff1d(rows, excluded)  # the caller leaves excluded items out
        values = (3 * np.log1p(rng.integers(1, 5, size=len(rows))) - 1).astype(np.float32)
        counted.append((rows, values))
        exclude.append(excluded.tolist())
    return users, factors, bias, counted, exclude


@pytest.mark.parametrize("seed", range(5))
def test_lists_equal_dense_top_n_with_the_term_added(seed: int) -> None:
    users, factors, bias, counted, exclude = _random_case(seed)
    n = 20
    ranked = rank_with_repeats(
        users, factors, bias, counted, exclude, n, RepeatTerm(weight=3.0, offset=-1.0),
        lambda v, skip: top_n(v, factors, bias, n, skip),
    )  # fmt: skip
    dense = _dense(users, factors, bias, counted, exclude)
    for j, (rows, scores) in enumerate(zip(*ranked, strict=True)):
        expected = np.argsort(-dense[j], kind="stable")[:n]
        assert rows.tolist() == expected.tolist()
        np.testing.assert_allclose(scores, dense[j, expected], rtol=1e-5)
        assert not set(rows.tolist()) & set(exclude[j])


def test_zero_term_is_the_plain_top_n() -> None:
    users, factors, bias, counted, exclude = _random_case(7)
    zero = [(rows, np.zeros(len(rows), np.float32)) for rows, _ in counted]
    rows, _ = rank_with_repeats(
        users, factors, bias, zero, exclude, 10, RepeatTerm(),
        lambda v, skip: top_n(v, factors, bias, 10, skip),
    )  # fmt: skip
    plain_rows, _ = top_n(users, factors, bias, 10, exclude)
    assert rows.tolist() == plain_rows.tolist()


def test_clustered_index_with_every_cluster_probed_gives_the_exact_lists() -> None:
    users, factors, bias, counted, exclude = _random_case(3, n_items=2000)
    index = ClusteredIndex(n_clusters=16, n_probe=16, head=0, recent=0)
    index.maybe_refresh(factors, bias, now_s=0.0)
    term = RepeatTerm(weight=3.0, offset=-1.0)
    exact = rank_with_repeats(
        users, factors, bias, counted, exclude, 15, term,
        lambda v, skip: top_n(v, factors, bias, 15, skip),
    )  # fmt: skip
    clustered = rank_with_repeats(
        users, factors, bias, counted, exclude, 15, term,
        lambda v, skip: index.search(v, factors, bias, 15, skip),
    )  # fmt: skip
    assert exact[0].tolist() == clustered[0].tolist()
    np.testing.assert_allclose(exact[1], clustered[1], rtol=1e-6)


def test_discovery_slots_keep_places_for_items_new_to_the_user() -> None:
    new_rows, new_scores = np.arange(10, 20), np.linspace(1.0, 0.1, 10)
    rep_rows, rep_scores = np.arange(5), np.full(5, 9.0)
    rows, scores = merge_repeats(new_rows, new_scores, rep_rows, rep_scores, 6, 2)
    assert rows.tolist() == [0, 1, 2, 3, 10, 11]
    assert list(scores) == sorted(scores, reverse=True)
    rows, _ = merge_repeats(new_rows[:1], new_scores[:1], rep_rows, rep_scores, 6, 3)
    assert rows.tolist() == [0, 1, 2, 3, 4, 10]  # only one new item exists
    rows, _ = merge_repeats(new_rows, new_scores, rep_rows, np.full(5, -np.inf), 4, 0)
    assert rows.tolist() == [10, 11, 12, 13]  # -inf is never listed


@pytest.mark.parametrize("slots", [0, 3, 10])
def test_batch_merge_equals_the_merge_of_each_user(slots: int) -> None:
    rng = np.random.default_rng(slots)
    n, b = 8, 20
    new_rows = np.stack([rng.permutation(np.arange(100, 130))[:n] for _ in range(b)])
    new_scores = -np.sort(-rng.normal(size=(b, n)).astype(np.float32), axis=1)
    new_scores[0, 3:] = -np.inf  # a user with few uncounted candidates
    rep_rows = [rng.choice(50, int(rng.integers(0, 15)), replace=False) for _ in range(b)]
    rep_scores = [rng.normal(1.0, 1.0, size=len(r)).astype(np.float32) for r in rep_rows]
    rows, scores = merge_batch(new_rows, new_scores, rep_rows, rep_scores, n, slots)
    for j in range(b):
        one_rows, one_scores = merge_repeats(
            new_rows[j], new_scores[j], rep_rows[j], rep_scores[j], n, slots
        )
        listed = scores[j] != -np.inf
        assert rows[j][listed].tolist() == one_rows.tolist()
        assert (rows[j][~listed] == -1).all()
        n_new = len(set(one_rows.tolist()) - set(rep_rows[j].tolist()))
        available = int((new_scores[j] != -np.inf).sum())
        assert n_new >= min(slots, n, available)
        assert list(one_scores) == sorted(one_scores, reverse=True)


def test_term_values_follow_the_formula() -> None:
    counts = RepeatCounts()
    for item, n in (("a", 1), ("b", 3)):
        for _ in range(n):
            counts.add(item, 1.0, 0)
    items, values = RepeatTerm(weight=2.0, offset=-0.5).values(counts)
    assert items == ["a", "b"]
    np.testing.assert_allclose(values, [2 * np.log(2) - 0.5, 2 * np.log(4) - 0.5], rtol=1e-6)
    assert not RepeatTerm().active and RepeatTerm(discovery_slots=1).active
