"""Diversity re-ranking of a recommendation list: MMR and a per-category cap.

Both functions are pure (numpy only, no state): they reorder a candidate list that is already
in relevance order and return the first ``k`` items of the new order.

- :func:`mmr` (maximal marginal relevance, Carbonell & Goldstein 1998) picks, one at a time,
  the item maximising ``(1 - lam) * relevance - lam * max_similarity_to_the_picked_ones``,
  with relevance min-max scaled to [0, 1] and cosine similarity of item vectors. ``lam = 0``
  keeps the relevance order; larger ``lam`` trades relevance for spread.
- :func:`cap_per_category` keeps at most ``cap`` items per category in the head of the list;
  :func:`cap_for_lambda` maps the same ``lam`` knob to a cap, for when item categories are known
  but item vectors are not.

Cost: ``mmr`` is ``O(k * n * d)`` time and ``O(n * d)`` memory for ``n`` candidates of
dimension ``d``; ``cap_per_category`` is ``O(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["cap_for_lambda", "cap_per_category", "mmr"]


def mmr(
    items: Sequence[str], scores: ArrayLike, vectors: ArrayLike, lam: float, k: int
) -> list[str]:
    """The first ``k`` items of the MMR order.

    Parameters
    ----------
    items
        Candidate ids.
    scores
        Relevance of each candidate (any scale; higher is better).
    vectors
        One row per candidate (e.g. item factors); similarity is their cosine.
    lam
        Diversity weight in [0, 1]: 0 is the relevance order (ties keep the input order).
    k
        How many items to return (at most ``len(items)``).

    Examples
    --------
    >>> vecs = [[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]
    >>> mmr(["a", "a2", "b"], [3.0, 2.9, 1.0], vecs, lam=0.0, k=2)
    ['a', 'a2']
    >>> mmr(["a", "a2", "b"], [3.0, 2.9, 1.0], vecs, lam=0.7, k=2)
    ['a', 'b']
    """
    rel, unit = _check(items, scores, vectors, lam, k)
    n = len(items)
    available = np.ones(n, dtype=bool)
    penalty = np.zeros(n)
    picked: list[int] = []
    for _ in range(min(k, n)):
        gain = (1.0 - lam) * rel - lam * penalty if picked else rel.copy()
        gain[~available] = -np.inf
        best = int(np.argmax(gain))  # first maximum: ties keep the input order
        picked.append(best)
        available[best] = False
        similarity = unit @ unit[best]
        penalty = similarity if len(picked) == 1 else np.maximum(penalty, similarity)
    return [items[i] for i in picked]


def _check(
    items: Sequence[str], scores: ArrayLike, vectors: ArrayLike, lam: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs; return min-max scaled relevance and unit-norm vectors."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rel = np.asarray(scores, dtype=np.float64).reshape(-1)
    vecs = np.asarray(vectors, dtype=np.float64)
    if vecs.ndim != 2 or not len(items) == len(rel) == vecs.shape[0]:
        raise ValueError("items, scores and vectors (2-d, one row each) must have equal length")
    spread = float(rel.max() - rel.min()) if len(rel) else 0.0
    rel = (rel - rel.min()) / spread if spread > 0 else np.ones_like(rel)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    unit = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
    return rel, unit


def cap_per_category(
    items: Sequence[str], categories: Mapping[str, str], cap: int, k: int
) -> list[str]:
    """The first ``k`` items with at most ``cap`` per category ahead of any over-cap item.

    Items are taken in input (relevance) order; an item whose category is full is deferred,
    and deferred items fill the tail only when too few items remain, so the list never gets
    shorter because of the cap. Items without a known category are never capped.

    >>> cats = {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}
    >>> cap_per_category(["a1", "a2", "a3", "b1"], cats, cap=1, k=3)
    ['a1', 'b1', 'a2']
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    counts: dict[str, int] = {}
    head: list[str] = []
    deferred: list[str] = []
    for item in items:
        category = categories.get(item)
        if category is not None and counts.get(category, 0) >= cap:
            deferred.append(item)
            continue
        if category is not None:
            counts[category] = counts.get(category, 0) + 1
        head.append(item)
    return (head + deferred)[: max(k, 0)]


def cap_for_lambda(lam: float, k: int) -> int:
    """The per-category cap matching a diversity weight: ``k`` at 0 (no cap), 1 at 1.

    >>> [cap_for_lambda(lam, 10) for lam in (0.0, 0.5, 0.95, 1.0)]
    [10, 5, 1, 1]
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return max(1, math.ceil(k * (1.0 - lam) - 1e-9))
