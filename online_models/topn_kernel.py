"""Compiled (numba) kernel of exact top-N: scores are compared as they are computed.

The item table is walked in strips of :data:`STRIP` items. Each strip is copied once, factor
by factor (``k x STRIP`` float32, which fits in the L1 cache next to the accumulators), and
every user of the batch is scored against it, :data:`TILE` users at a time with the factor
loop unrolled by four, so each accumulator load and store is shared by 16 multiply-adds. Each
user's scores for the strip are then compared with the user's threshold, 64 at a time without
a branch per item, and only the items at or above it are offered to the user's best ``n`` so
far (a binary heap). The full score matrix is never written.

Exactness: an item below a user's threshold is never in the user's top ``n`` as long as at
least ``n`` non-excluded items reach the threshold (the caller checks the count and redoes the
user otherwise). Once a user holds ``n`` items the threshold is raised just above the lowest
score held: later items have larger rows, so an equal score would lose the tie anyway.

State: none between calls. Per call: the strip copy, the accumulators (``TILE x STRIP``
float32) and a few small index arrays; the result arrays are the caller's. :func:`scan`
releases the GIL, so threads can run it on different users at once. Compiled code is cached
on disk (``cache=True``): a new process loads it instead of compiling again.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["STRIP", "TILE", "scan"]

STRIP = 256
TILE = 4
_BLOCK = 64  # items compared at once before looking at any one of them
_INF = np.float32(np.inf)
_FAST = {"contract", "reassoc", "nsz", "arcp", "afn"}  # no nnan/ninf: -inf and NaN compare right


@numba.njit(cache=True, fastmath=_FAST, boundscheck=False, inline="always")
def _score_tile(
    users: np.ndarray, u0: int, strip: np.ndarray, strip_bias: np.ndarray, w: int, acc: np.ndarray
) -> None:
    """``acc[t, j] = strip_bias[j] + users[u0 + t] . strip[:, j]`` for the 4 users of a tile."""
    k = strip.shape[0]
    for j in range(w):
        acc[0, j] = acc[1, j] = acc[2, j] = acc[3, j] = strip_bias[j]
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    x0, x1, x2, x3 = users[u0], users[u0 + 1], users[u0 + 2], users[u0 + 3]
    main = k - k % 4
    for f in range(0, main, 4):
        r0, r1, r2, r3 = strip[f], strip[f + 1], strip[f + 2], strip[f + 3]
        p0, p1, p2, p3 = x0[f], x0[f + 1], x0[f + 2], x0[f + 3]
        q0, q1, q2, q3 = x1[f], x1[f + 1], x1[f + 2], x1[f + 3]
        s0, s1, s2, s3 = x2[f], x2[f + 1], x2[f + 2], x2[f + 3]
        t0, t1, t2, t3 = x3[f], x3[f + 1], x3[f + 2], x3[f + 3]
        for j in range(w):
            c0, c1, c2, c3 = r0[j], r1[j], r2[j], r3[j]
            a0[j] += p0 * c0 + p1 * c1 + p2 * c2 + p3 * c3
            a1[j] += q0 * c0 + q1 * c1 + q2 * c2 + q3 * c3
            a2[j] += s0 * c0 + s1 * c1 + s2 * c2 + s3 * c3
            a3[j] += t0 * c0 + t1 * c1 + t2 * c2 + t3 * c3
    for f in range(main, k):
        r = strip[f]
        p, q, s, t = x0[f], x1[f], x2[f], x3[f]
        for j in range(w):
            a0[j] += p * r[j]
            a1[j] += q * r[j]
            a2[j] += s * r[j]
            a3[j] += t * r[j]


@numba.njit(cache=True, fastmath=_FAST, boundscheck=False, nogil=True)
def scan(
    users: np.ndarray, factors: np.ndarray, bias: np.ndarray, thresholds: np.ndarray,
    excl_ptr: np.ndarray, excl_rows: np.ndarray, best_rows: np.ndarray,
    best_scores: np.ndarray, held: np.ndarray,
) -> None:  # fmt: skip
    """Each user's best ``n`` non-excluded rows scoring ``>= thresholds[u]``, best first (ties:
    lower row first), into ``best_rows``/``best_scores`` (users x n); ``held[u]`` (start at 0)
    says how many were found, fewer than ``n`` when the threshold was too high.

    ``users`` is B x k with B a multiple of :data:`TILE` (pad with zero rows; only the first
    ``len(thresholds)`` users are scanned). ``excl_rows[excl_ptr[u]:excl_ptr[u + 1]]`` are user
    ``u``'s excluded rows, sorted. ``thresholds`` is raised as the best ``n`` fill up.
    """
    n_items, k = factors.shape
    n_users = thresholds.shape[0]
    strip = np.empty((k, STRIP), dtype=np.float32)
    strip_bias = np.empty(STRIP, dtype=np.float32)
    acc = np.empty((TILE, STRIP), dtype=np.float32)
    hit_user = np.empty(TILE * (STRIP // _BLOCK), dtype=np.int64)
    hit_block = np.empty_like(hit_user)
    found = np.empty(_BLOCK, dtype=np.int64)
    excl_pos = excl_ptr[:-1].copy()
    for start in range(0, n_items, STRIP):
        w = min(STRIP, n_items - start)
        for j in range(w):
            strip_bias[j] = bias[start + j]
            for f in range(k):
                strip[f, j] = factors[start + j, f]
        for u0 in range(0, n_users, TILE):
            _score_tile(users, u0, strip, strip_bias, w, acc)
            n_hits = 0
            for u in range(u0, min(u0 + TILE, n_users)):
                t, a = thresholds[u], acc[u - u0]
                for block in range(0, w, _BLOCK):
                    hit = False
                    for j in range(block, min(block + _BLOCK, w)):  # vectorised, no branch
                        hit |= a[j] >= t
                    if hit:
                        hit_user[n_hits], hit_block[n_hits] = u, block
                        n_hits += 1
            if n_hits:
                _collect(acc, u0, start, w, hit_user[:n_hits], hit_block[:n_hits], thresholds,
                         excl_ptr, excl_rows, excl_pos, best_rows, best_scores, held,
                         found)  # fmt: skip
    for u in range(n_users):
        _sort_heap(best_rows[u], best_scores[u], held[u])


@numba.njit(cache=True, boundscheck=False)
def _collect(
    acc: np.ndarray, u0: int, start: int, w: int, hit_user: np.ndarray, hit_block: np.ndarray,
    thresholds: np.ndarray, excl_ptr: np.ndarray, excl_rows: np.ndarray, excl_pos: np.ndarray,
    best_rows: np.ndarray, best_scores: np.ndarray, held: np.ndarray, found: np.ndarray,
) -> None:  # fmt: skip
    """Offer the items of the blocks where ``scan`` saw a score at or above the threshold."""
    n = best_rows.shape[1]
    for h in range(hit_user.shape[0]):
        u, block = hit_user[h], hit_block[h]
        a, end = acc[u - u0], excl_ptr[u + 1]
        t, n_found = thresholds[u], 0
        for j in range(block, min(block + _BLOCK, w)):  # branch-free: where the hits are
            found[n_found] = j
            n_found += a[j] >= t
        for i in range(n_found):
            s, row = a[found[i]], start + found[i]
            if not s >= thresholds[u]:  # raised by an earlier hit of the block
                continue
            p = excl_pos[u]
            while p < end and excl_rows[p] < row:
                p += 1
            excl_pos[u] = p
            if p < end and excl_rows[p] == row:
                continue
            rows, scores = best_rows[u], best_scores[u]
            if held[u] < n:
                _push(rows, scores, held[u], row, s)
                held[u] += 1
            else:
                _replace_root(rows, scores, n, row, s)
            if held[u] == n:
                thresholds[u] = max(thresholds[u], np.nextafter(scores[0], _INF))


# Each user's best rows so far are a binary min-heap ordered by (score, -row): its root is the
# one that goes first when a better row arrives. Rows arrive in increasing order, so a new row
# with the root's score loses the tie (hence the threshold just above the root's score).


@numba.njit(cache=True, boundscheck=False, inline="always")
def _worse(score_a: float, row_a: int, score_b: float, row_b: int) -> bool:
    return score_a < score_b or (score_a == score_b and row_a > row_b)


@numba.njit(cache=True, boundscheck=False, inline="always")
def _push(rows: np.ndarray, scores: np.ndarray, held: int, row: int, score: float) -> None:
    """Add a row to a heap of ``held`` (< its size) rows."""
    i = held
    while i > 0:
        parent = (i - 1) >> 1
        if not _worse(score, row, scores[parent], rows[parent]):
            break
        rows[i], scores[i] = rows[parent], scores[parent]
        i = parent
    rows[i], scores[i] = row, score


@numba.njit(cache=True, boundscheck=False, inline="always")
def _replace_root(rows: np.ndarray, scores: np.ndarray, held: int, row: int, score: float) -> None:
    """Put a row in the root's place of a heap of ``held`` rows and sift it down."""
    i = 0
    while 2 * i + 1 < held:
        child = 2 * i + 1
        if child + 1 < held and _worse(scores[child + 1], rows[child + 1], scores[child],
                                       rows[child]):  # fmt: skip
            child += 1
        if not _worse(scores[child], rows[child], score, row):
            break
        rows[i], scores[i] = rows[child], scores[child]
        i = child
    rows[i], scores[i] = row, score


@numba.njit(cache=True, boundscheck=False)
def _sort_heap(rows: np.ndarray, scores: np.ndarray, held: int) -> None:
    """Heap order to best first (score descending, row ascending), in place."""
    for end in range(held - 1, 0, -1):
        row, score = rows[end], scores[end]
        rows[end], scores[end] = rows[0], scores[0]
        _replace_root(rows, scores, end, row, score)
