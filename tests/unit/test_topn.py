"""Exact top-N (online_models.topn): the compiled kernel against a brute-force sort.

Integer-valued factors, biases and users keep every score exact in float32 whatever the
summation order, so the kernel's rows must equal a stable argsort of the full score matrix,
ties included. Float data is checked up to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from online_models import topn
from online_models.topn import top_n, top_n_blas


def _brute_force(
    users: np.ndarray, factors: np.ndarray, bias: np.ndarray, n: int, exclude: list[list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    scores = users.astype(np.float64) @ factors.T.astype(np.float64) + bias
    for i, skip in enumerate(exclude):
        scores[i, skip] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return rows, np.take_along_axis(scores, rows, axis=1)


def _case(rng: np.random.Generator, n_items: int, levels: int) -> tuple[np.ndarray, ...]:
    """Integer-valued data; few ``levels`` = many tied scores."""
    k = int(rng.integers(1, 9))
    factors = rng.integers(-levels, levels + 1, (n_items, k)).astype(np.float32)
    bias = rng.integers(-levels, levels + 1, n_items).astype(np.float32)
    users = rng.integers(-levels, levels + 1, (int(rng.integers(1, 11)), k)).astype(np.float32)
    return factors, bias, users


def _exclusions(rng: np.random.Generator, n_users: int, n_items: int) -> list[list[int]]:
    """Per user: nothing, a few rows (duplicates and negative rows too), or nearly all."""
    out = []
    for _ in range(n_users):
        kind = rng.integers(0, 3)
        if kind == 0:
            out.append([])
        elif kind == 1:
            rows = rng.integers(-n_items, n_items, int(rng.integers(1, 2 + n_items // 4)))
            out.append(rows.tolist())
        else:
            out.append(rng.permutation(n_items)[: max(0, n_items - 3)].tolist())
    return out


@pytest.mark.parametrize("n_items", [1, 2, 3, 7, 50, 300, 1000, 9000, 40_000])
def test_rows_equal_a_stable_sort_of_every_score(n_items: int) -> None:
    rng = np.random.default_rng(n_items)
    for trial in range(12):
        factors, bias, users = _case(rng, n_items, levels=1 if trial % 3 == 0 else 20)
        n = int(rng.integers(1, min(2 * n_items, 120) + 1))  # n > n_items too
        exclude = _exclusions(rng, len(users), n_items) if trial % 2 else []
        chunk, threads = int(rng.integers(1, 12)), int(rng.integers(1, 4))
        rows, scores = top_n(users, factors, bias, n, exclude or None, chunk, threads)
        want_rows, want_scores = _brute_force(users, factors, bias, n, exclude)
        assert rows.shape == (len(users), min(n, n_items))
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_exact_when_the_sampled_rows_are_the_best_ones() -> None:
    # every 16th row (the sample's stride on this size) scores high: the sampled threshold
    # lets too few rows through, so the kernel must redo those users without one
    n_items = 20_000
    bias = np.zeros(n_items, dtype=np.float32)
    bias[::16] = 1000 + np.arange(len(bias[::16]), dtype=np.float32)
    factors = np.zeros((n_items, 2), dtype=np.float32)
    users = np.ones((5, 2), dtype=np.float32)
    for exclude in ([], [list(range(0, n_items, 16))] * 5):
        rows, scores = top_n(users, factors, bias, 50, exclude or None)
        want_rows, want_scores = _brute_force(users, factors, bias, 50, exclude)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)


def test_a_score_equal_to_the_threshold_is_kept() -> None:
    # 20k rows: every 16th is sampled and the threshold is a sampled score. Rows scoring 1
    # make it 1; rows 0 and 5 score exactly 1 with nothing higher in their 64-row block,
    # while the later blocks each hold a 2: rows 0 and 5 still belong in the top 30
    bias = np.zeros(20_000, dtype=np.float32)
    bias[[0, 5]] = 1.0
    for block in range(1, 11):
        bias[64 * block : 64 * block + 21] = 1.0
        bias[64 * block + 63] = 2.0
    factors, users = np.zeros((20_000, 1), dtype=np.float32), np.ones((1, 1), dtype=np.float32)
    rows, _ = top_n(users, factors, bias, 30)
    assert rows[0, 10:12].tolist() == [0, 5]
    np.testing.assert_array_equal(rows, _brute_force(users, factors, bias, 30, [])[0])


def test_a_score_one_step_above_the_nth_is_kept() -> None:
    one = np.float32(1.0)
    bias = np.array([one, np.nextafter(one, np.float32(2)), 0.0, one], dtype=np.float32)
    factors, users = np.zeros((4, 1), dtype=np.float32), np.zeros((1, 1), dtype=np.float32)
    assert top_n(users, factors, bias, 1)[0].tolist() == [[1]]
    assert top_n(users, factors, bias, 2)[0].tolist() == [[1, 0]]


def test_a_later_block_scoring_one_step_above_the_held_row_wins() -> None:
    bias = np.zeros(200, dtype=np.float32)
    bias[0] = 1.0  # held first; the threshold becomes the next float above 1
    bias[64] = np.nextafter(np.float32(1.0), np.float32(2))  # in the next 64-row block
    factors, users = np.zeros((200, 1), dtype=np.float32), np.zeros((1, 1), dtype=np.float32)
    assert top_n(users, factors, bias, 1)[0].tolist() == [[64]]


def test_the_sampled_threshold_is_the_rank_th_best_sampled_score() -> None:
    # 40k rows: every 16th is sampled (2,500) and 4 * n * 2,500 / 40k = 12 for n = 48
    n_items, step, rank = 40_000, 16, 12
    rng = np.random.default_rng(5)
    factors = rng.normal(size=(n_items, 3)).astype(np.float32)
    bias = rng.normal(size=n_items).astype(np.float32)
    users = np.zeros((4, 3), dtype=np.float32)  # scores = bias
    skip = [[], [int(np.argmax(bias[::step])) * step], [], []]
    excl = topn._exclusions(skip, 4, n_items)
    thresholds = np.full(4, -np.inf, dtype=np.float32)
    topn._sample_thresholds(users, factors, bias, 48, excl, thresholds, threads=1)
    sampled = np.sort(bias[::step])[::-1]
    assert thresholds.tolist() == [sampled[rank - 1], sampled[rank], *[sampled[rank - 1]] * 2]


def test_rising_scores_and_all_equal_scores() -> None:
    n_items = 30_000
    factors = np.zeros((n_items, 4), dtype=np.float32)
    users = np.zeros((6, 4), dtype=np.float32)
    for bias in (np.arange(n_items, dtype=np.float32), np.zeros(n_items, dtype=np.float32)):
        rows, _ = top_n(users, factors, bias, 40)
        np.testing.assert_array_equal(rows, _brute_force(users, factors, bias, 40, [])[0])


def test_float_scores_match_a_full_product() -> None:
    rng = np.random.default_rng(7)
    factors = rng.normal(0.0, 0.1, (50_000, 32)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, 50_000).astype(np.float32)
    users = rng.normal(0.0, 0.1, (13, 32)).astype(np.float32)
    exclude = [rng.integers(0, 50_000, 200).tolist() for _ in range(13)]
    rows, scores = top_n(users, factors, bias, 50, exclude, threads=2)
    full = users @ factors.T + bias
    for i, skip in enumerate(exclude):
        full[i, skip] = -np.inf
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    for i in range(len(users)):
        rest = np.delete(full[i], rows[i])
        assert scores[i, -1] >= rest.max() - 1e-6  # nothing left out scores higher
        assert not set(rows[i].tolist()) & set(exclude[i])


def test_the_blas_reference_agrees_and_bad_exclusions_raise() -> None:
    rng = np.random.default_rng(3)
    factors, bias, users = _case(rng, 12_000, levels=30)
    exclude = _exclusions(rng, len(users), 12_000)
    want_rows, want_scores = _brute_force(users, factors, bias, 20, exclude)
    rows, scores = top_n_blas(users, factors, bias, 20, exclude)
    np.testing.assert_array_equal(scores, want_scores)  # ties at the 20th may break either way
    assert np.mean(rows == want_rows) > 0.5
    with pytest.raises(IndexError):
        top_n(users, factors, bias, 5, [[12_000]] * len(users))
