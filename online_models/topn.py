"""Exact top-N retrieval over the whole item table for a batch of users.

One matrix product scores every item for every user in the batch (``U @ Q.T + b``), excluded
items are masked, and ``argpartition`` selects each row's best ``n`` before a final sort of
just those. Batches are processed in chunks of ``chunk`` users so the score matrix stays
bounded at ``chunk * n_items * 4`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["top_n"]

_PREFILTER_MIN_ITEMS = 8192
_SAMPLE = 4096


def top_n(
    users: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` item rows and their scores for each user row of ``users`` (B x k).

    Returns ``(rows, scores)``, both B x min(n, n_items), best first. Excluded rows of a user
    get score ``-inf`` and sort last (they only appear when fewer than ``n`` items remain).

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
