"""Exact top-N retrieval over the whole item table for a batch of users.

:func:`top_n` scores every item for every user without writing the score matrix: a compiled
kernel (:mod:`online_models.topn_kernel`) computes scores strip by strip and offers a user's
best ``n`` so far only the items at or above a per-user threshold. The threshold comes from a
strided sample of the items, scored first by the same kernel; a user it leaves with fewer than
``n`` items is redone without one. :func:`top_n_blas` is the previous implementation (one BLAS
product per chunk of users, then numpy selection), kept as the benchmark's baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from online_models import topn_kernel

__all__ = ["top_n", "top_n_blas"]

_PREFILTER_MIN_ITEMS = 8192
_SAMPLE = 4096
_MIN_SAMPLE_STEP = 16  # the sample costs at most 1/16 of the scoring
_OVERSAMPLE = 4  # the sampled threshold aims at about 4 * n candidates per user


def top_n(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk: int = 256,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` item rows and their scores for each user row of ``users`` (B x k).

    Returns ``(rows, scores)``, both B x min(n, n_items), best first, ties broken by the lower
    row. Scores are ``users @ factors.T + bias`` computed in float32 (the summation order
    differs from a BLAS product's, so a score may differ from it in the last bit). Excluded
    rows of a user (negative rows count from the end, as in numpy) get score ``-inf`` and sort
    last: they only appear when fewer than ``n`` items remain.

    Users are processed ``chunk`` at a time; ``threads`` threads share a chunk's users (the
    kernel releases the GIL; 1 = the calling thread only). Memory per call, besides the
    result and float32 copies of ``factors``/``bias`` when they are not contiguous float32: a
    float32 copy of the chunk's users, the sampled item rows (``n_items / 16 x k`` float32 at
    most), per user of a chunk a few dozen sampled scores and its exclusions as int64, and per
    thread the kernel's strip buffers (``(k + 5) x 256`` float32); never the
    ``chunk x n_items`` score matrix. The first call in a process loads the compiled kernel
    from numba's on-disk cache, or compiles it (a few seconds) when there is none.

    >>> q = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    >>> rows, scores = top_n(np.array([[1, 0]], dtype=np.float32), q, np.zeros(3, np.float32), 2)
    >>> rows.tolist(), scores.tolist()
    ([[0, 2]], [[1.0, 1.0]])
    >>> u, b = np.array([[1, 0]], dtype=np.float32), np.zeros(3, np.float32)
    >>> top_n(u, q, b, 2, exclude=[[0]])[0].tolist()
    [[2, 1]]
    """
    n_items = factors.shape[0]
    k = min(n, n_items)
    if k == n_items:  # every item is listed: nothing to select
        return top_n_blas(users, factors, bias, n, exclude, chunk)
    factors = np.ascontiguousarray(factors, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    out_rows = np.empty((users.shape[0], k), dtype=np.int64)
    out_scores = np.empty((users.shape[0], k), dtype=np.float32)
    for start in range(0, users.shape[0], chunk):
        block = users[start : start + chunk]
        skip = None if exclude is None else exclude[start : start + len(block)]
        rows, scores = out_rows[start : start + len(block)], out_scores[start : start + len(block)]
        short = _kernel_chunk(block, factors, bias, k, skip, rows, scores, True, threads)
        if len(short):  # the sampled threshold let fewer than k items through (rare): redo
            again = None if skip is None else [skip[i] for i in short]
            rows_s, scores_s = rows[short], scores[short]
            still = _kernel_chunk(block[short], factors, bias, k, again, rows_s, scores_s, False)
            rows[short], scores[short] = rows_s, scores_s
            if len(still):  # fewer than k items left after exclusions: sort them in full
                short, again = short[still], None if again is None else [again[i] for i in still]
                rows[short], scores[short] = _sorted_in_full(block[short], factors, bias, k, again)
    return out_rows, out_scores


def _kernel_chunk(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None,
    out_rows: np.ndarray,
    out_scores: np.ndarray,
    sampled: bool,
    threads: int = 1,
) -> np.ndarray:
    """Fill ``out_*`` for one chunk of users; returns the users the kernel could not settle
    (fewer than ``k`` items at or above the threshold: a sampled one, or ``-inf``), whose rows
    are left partly written."""
    n_users, tile = users.shape[0], topn_kernel.TILE
    padded = np.zeros((-(-n_users // tile) * tile, factors.shape[1]), dtype=np.float32)
    padded[:n_users] = users
    excl = _exclusions(exclude, n_users, factors.shape[0])
    thresholds = np.full(n_users, -np.inf, dtype=np.float32)
    if sampled:
        _sample_thresholds(padded, factors, bias, k, excl, thresholds, threads)
    held = np.zeros(n_users, dtype=np.int64)
    _scan(padded, factors, bias, thresholds, excl, out_rows, out_scores, held, threads)
    return np.flatnonzero(held < k)


def _sample_thresholds(
    padded: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    k: int,
    excl: tuple[np.ndarray, np.ndarray],
    thresholds: np.ndarray,
    threads: int,
) -> None:
    """Set each user's threshold to a score that about ``4 k`` items reach: the ``rank``-th
    best score of every ``step``-th item (found by the same kernel); left at ``-inf`` (every
    item a candidate) on catalogues too small for a useful sample."""
    n_items, n_users = factors.shape[0], len(thresholds)
    step = max(_MIN_SAMPLE_STEP, n_items // _SAMPLE)
    n_sampled = -(-n_items // step)
    rank = max(8, _OVERSAMPLE * k * n_sampled // n_items)
    if rank >= n_sampled:
        return
    ptr, rows = excl
    sampled = rows % step == 0  # exclusions that fall on sampled rows, renumbered
    sample_excl = np.concatenate(([0], np.cumsum(sampled)))[ptr], rows[sampled] // step
    best_rows = np.empty((n_users, rank), dtype=np.int64)
    best_scores = np.empty((n_users, rank), dtype=np.float32)
    held = np.zeros(n_users, dtype=np.int64)
    _scan(padded, np.ascontiguousarray(factors[::step]), np.ascontiguousarray(bias[::step]),
          thresholds.copy(), sample_excl, best_rows, best_scores, held, threads)  # fmt: skip
    thresholds[held == rank] = best_scores[held == rank, rank - 1]


def _scan(
    padded: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    thresholds: np.ndarray,
    excl: tuple[np.ndarray, np.ndarray],
    out_rows: np.ndarray,
    out_scores: np.ndarray,
    held: np.ndarray,
    threads: int,
) -> None:
    """:func:`topn_kernel.scan` of the first ``len(thresholds)`` users of ``padded``, split
    into ``threads`` runs of whole tiles, the first on the calling thread."""
    n_users, tile = len(thresholds), topn_kernel.TILE
    per_thread = -(-n_users // threads // tile) * tile
    parts = [(a, min(a + per_thread, n_users)) for a in range(0, n_users, per_thread)]

    def run(part: tuple[int, int]) -> None:
        a, b = part
        topn_kernel.scan(padded[a : a + -(-(b - a) // tile) * tile], factors, bias,
                         thresholds[a:b], excl[0][a : b + 1], excl[1], out_rows[a:b],
                         out_scores[a:b], held[a:b])  # fmt: skip

    if len(parts) == 1:
        run(parts[0])
        return
    with ThreadPoolExecutor(len(parts) - 1) as pool:
        others = [pool.submit(run, part) for part in parts[1:]]
        run(parts[0])
        for other in others:
            other.result()


def _sorted_in_full(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` rows by a full stable sort of each user's scores (a few users at most)."""
    scores = users @ factors.T
    scores += bias
    for i, skip in enumerate(exclude or ()):
        scores[i, np.asarray(skip, dtype=np.int64)] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def _exclusions(
    exclude: Sequence[Sequence[int]] | None, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Excluded rows as ``(ptr, rows)``: user ``u``'s are ``rows[ptr[u]:ptr[u + 1]]``, sorted
    (negative rows count from the end; a row outside the table raises ``IndexError``)."""
    if exclude is None:
        return np.zeros(n_users + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
    lengths = np.fromiter(map(len, exclude), dtype=np.int64, count=n_users)
    ptr = np.concatenate(([0], np.cumsum(lengths)))
    if not ptr[-1]:
        return ptr, np.empty(0, dtype=np.int64)
    rows = np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in exclude])
    if rows.min() < -n_items or rows.max() >= n_items:
        raise IndexError(f"excluded row out of range for {n_items} items")
    rows[rows < 0] += n_items
    owner = np.repeat(np.arange(n_users), lengths)
    return ptr, rows[np.lexsort((rows, owner))]


def top_n_blas(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_n` through one BLAS product per chunk of ``chunk`` users and numpy
    selection: the score matrix (``chunk * n_items * 4`` bytes) is written and read again.
    Ties at the ``n``-th place may be broken either way.

    >>> q = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    >>> u, b = np.array([[1, 0]], dtype=np.float32), np.zeros(3, np.float32)
    >>> top_n_blas(u, q, b, 2, exclude=[[0]])[0].tolist()
    [[2, 1]]
    """
    n_items = factors.shape[0]
    k = min(n, n_items)
    out_rows = np.empty((users.shape[0], k), dtype=np.int64)
    out_scores = np.empty((users.shape[0], k), dtype=np.float32)
    for start in range(0, users.shape[0], chunk):
        block = users[start : start + chunk]
        scores = block @ factors.T
        scores += bias
        if exclude is not None:
            for i, rows in enumerate(exclude[start : start + len(block)]):
                if len(rows):
                    scores[i, np.asarray(rows, dtype=np.int64)] = -np.inf
        best = _select(scores, k)
        out_rows[start : start + len(block)] = best
        out_scores[start : start + len(block)] = np.take_along_axis(scores, best, axis=1)
    return out_rows, out_scores


def _select(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` largest scores, best first (ties: lower index first)."""
    n = scores.shape[1]
    if k >= n:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    elif n >= _PREFILTER_MIN_ITEMS:
        part = _prefiltered(scores, k)
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return _sort(scores, part)


def _sort(scores: np.ndarray, part: np.ndarray) -> np.ndarray:
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _prefiltered(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` candidates per row without a full partition of every row.

    A strided sample of each row gives a threshold that about ``8 * k`` scores exceed; one
    vectorised comparison finds them, and only those are partitioned. Ties at the threshold
    are all kept, so the result is exact; a row with fewer than ``k`` scores above its
    threshold (rare) falls back to a full partition.
    """
    n = scores.shape[1]
    step = max(1, n // _SAMPLE)
    sample = scores[:, ::step]
    rank = min(sample.shape[1] - 1, max(8, 8 * k * sample.shape[1] // n))
    threshold = np.partition(sample, sample.shape[1] - 1 - rank, axis=1)[:, -1 - rank]
    flat = np.flatnonzero(scores >= threshold[:, None])  # much faster than np.nonzero
    bounds = np.searchsorted(flat, np.arange(scores.shape[0] + 1) * n).tolist()
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i in range(scores.shape[0]):
        candidates = flat[bounds[i] : bounds[i + 1]] - i * n
        if len(candidates) < k:
            out[i] = np.argpartition(-scores[i], k - 1)[:k]
            continue
        best = np.argpartition(-scores[i, candidates], k - 1)[:k]
        out[i] = candidates[best]
    return out
