"""Compiled (numba) arithmetic of one online-MF learning step (:meth:`ImplicitMF.update`).

One step touches five item rows of 32 factors: a few hundred multiply-adds, which numpy
spreads over twenty calls of about a microsecond each. :func:`sgd_step` does the step's
arithmetic in one call and :func:`splitmix_rows` draws the sampled negatives, so the model
spends its time on the step rather than on dispatching it. The user vector's own update stays
with the model's River optimiser. :func:`add_rows` applies a batch of published deltas to an
item table replica (what ``np.add.at`` does, without its per-row overhead).

The step uses the factors as they are before it (all gradients first, then all updates), in
float32 throughout; the scores are clipped to ``[-CLIP, CLIP]`` before the sigmoid.

State: none. Compiled code is cached on disk (``cache=True``): a new process loads it instead
of compiling again.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["CLIP", "add_rows", "sgd_step", "splitmix_rows"]

CLIP = 30.0
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True, boundscheck=False)
def sgd_step(
    factors: np.ndarray, bias: np.ndarray, rows: np.ndarray, user: np.ndarray,
    weight: float, lr: float, l2: float,
    d_factors: np.ndarray, d_bias: np.ndarray, grad_user: np.ndarray,
) -> None:  # fmt: skip
    """One weighted logistic step for the positive ``rows[0]`` and negatives ``rows[1:]``
    (distinct rows of ``factors``/``bias``, which it updates in place).

    Writes the item deltas into ``d_factors`` (m x k) and ``d_bias`` (m,) and the user's
    gradient (L2 term included) into ``grad_user``; ``user`` itself is not changed.

    >>> f, b, user = np.zeros((2, 2), np.float32), np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> d_f, d_b, g_u = np.empty_like(f), np.empty_like(b), np.empty_like(user)
    >>> sgd_step(f, b, np.array([0, 1]), user, 2.0, 0.1, 0.0, d_f, d_b, g_u)
    >>> d_b.tolist(), b.tolist()   # sigmoid(0) = 0.5: the positive moves up, the negative down
    ([0.10000000149011612, -0.05000000074505806], [0.10000000149011612, -0.05000000074505806])
    """
    m, k = d_factors.shape
    w, rate, decay = np.float32(weight), np.float32(lr), np.float32(l2)
    one, clip = np.float32(1.0), np.float32(CLIP)
    for f in range(k):
        grad_user[f] = decay * user[f]
    for j in range(m):  # gradients from the factors before the step
        r = rows[j]
        score = bias[r]
        for f in range(k):
            score += factors[r, f] * user[f]
        score = min(max(score, -clip), clip)
        g = one / (one + np.float32(math.exp(-score)))  # d loss / d score
        if j == 0:
            g = w * (g - one)
        d_bias[j] = -rate * g
        for f in range(k):
            grad_user[f] += g * factors[r, f]
            d_factors[j, f] = -rate * (g * user[f] + decay * factors[r, f])
    add_rows(factors, bias, rows, d_factors, d_bias)  # then the updates


@numba.njit(cache=True)
def splitmix_rows(state: np.uint64, positive: int, n_rows: int, out: np.ndarray) -> None:
    """Fill ``out`` with distinct rows in ``[0, n_rows)`` other than ``positive``, drawn in
    order from the SplitMix64 stream that starts at ``state``; needs ``len(out) < n_rows``.

    >>> out = np.empty(3, np.int64)
    >>> splitmix_rows(np.uint64(42), 0, 10, out); len(set(out.tolist())) == 3 and 0 not in out
    True
    """
    s = np.uint64(state)
    found = 0
    while found < out.shape[0]:
        s += _GOLDEN
        z = (s ^ (s >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        row = np.int64((z ^ (z >> np.uint64(31))) % np.uint64(n_rows))
        fresh = row != positive
        for i in range(found):
            fresh = fresh and out[i] != row
        if fresh:
            out[found] = row
            found += 1


@numba.njit(cache=True, boundscheck=False)
def add_rows(
    factors: np.ndarray, bias: np.ndarray, rows: np.ndarray, d_factors: np.ndarray,
    d_bias: np.ndarray,
) -> None:  # fmt: skip
    """``factors[rows[j]] += d_factors[j]`` and ``bias[rows[j]] += d_bias[j]`` for each ``j``
    in order, so a repeated row gets each of its deltas in turn (as ``np.add.at``).

    >>> f, b = np.zeros((2, 1), np.float32), np.zeros(2, np.float32)
    >>> add_rows(f, b, np.array([1, 1]), np.ones((2, 1), np.float32), np.ones(2, np.float32))
    >>> f.ravel().tolist(), b.tolist()
    ([0.0, 2.0], [0.0, 2.0])
    """
    k = factors.shape[1]
    for j in range(rows.shape[0]):
        r = rows[j]
        bias[r] += d_bias[j]
        for f in range(k):
            factors[r, f] += d_factors[j, f]
