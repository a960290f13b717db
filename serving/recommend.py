"""What the recommendation API serves: pure ranking logic (no I/O, no web framework).

Input is one :class:`Snapshot` of what Redis holds for a user (read in one round trip): the
user's personal list ``{prefix}:rec:home:{user}``, the user's features
``{prefix}:features:{user}``, the global trending list ``{prefix}:trending`` and, for the
product and cart scenes, the neighbour lists ``{prefix}:rec:product:{item}`` of the viewed
item or of the items in the user's cart (:mod:`flink_jobs.item_neighbours`). Per scene:

- ``home``: the personal list (strategy ``online_mf``), reason ``personal``.
- ``product`` (needs ``item_id``): the item's neighbour list (strategy ``cooccurrence``),
  reason ``similar``, padded with trending. Without a neighbour list: trending minus that
  item, reason ``trending``.
- ``cart``: the neighbour lists of the items in the user's ``cart`` feature (added to the cart,
  not bought since), merged by summing each item's normalised scores (reason ``with_cart``)
  and interleaved one for one with the personal list (reason ``personal``), strategy
  ``cooccurrence``. Items in the cart, and the user's ``recent`` and ``purchased`` items, are
  left out. Without neighbour items: the personal list minus those items, reason
  ``personal``.

A missing list, a cold user's list (the job stores strategy ``trending`` for them) or a list
emptied by the exclusions falls back to trending; a short personal list is padded with trending
items up to ``k``. Trending is per category where categories are known
(:attr:`Snapshot.category_trending`: the trending lists of the shopper's most counted
categories, or of the viewed product's category, blended by :func:`blend`; reason
``popular_in_category``), then the global trending list (reason ``trending``). So nobody gets
an error or an empty list while trending has items. Items the user purchased are removed in
every scene when ``exclude_purchased`` is set (the job already excludes them when it writes
the list; the API also catches purchases made after that).

Diversity (``diversity`` in [0, 1], see :mod:`online_models.diversity`) re-ranks the primary
source (personal list, or trending) with MMR when item vectors are known for every candidate,
else with a per-category cap when item categories are known; otherwise the list is served in
relevance order and :attr:`Served.diversified` is ``False``. The API passes the categories the
job filed in Redis (``{prefix}:item_categories``), so it caps items per category; Redis holds
no item vectors, so MMR serves callers that pass vectors (offline evaluation).

An experiment's arm (:attr:`RecRequest.strategy`, see :mod:`serving.assignment`) can force the
``trending`` strategy on a user who has a personal (or neighbour) list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import numpy as np

from connectors.redis_lists import RecList
from online_models.diversity import cap_for_lambda, cap_per_category, mmr

__all__ = [
    "SCENES",
    "ItemSignals",
    "RecRequest",
    "Scored",
    "Served",
    "Snapshot",
    "blend",
    "cart_items",
    "preferred_categories",
    "recommend",
    "uses_trending",
]

SCENES: tuple[str, ...] = ("home", "cart", "product")
"""Scenes the API serves (``product`` needs an ``item_id``)."""

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class Snapshot:
    """What Redis holds for one user: personal list, features and trending (best first)."""

    personal: RecList | None
    features: Mapping[str, Any] | None
    trending: Sequence[tuple[str, float]]
    neighbours: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=dict)
    """Neighbour lists by item (the product's, or the cart items'), best first."""
    category_trending: Sequence[tuple[str, float]] = ()
    """Trending items of the categories that fit this request (see :func:`blend`), best first;
    empty when unknown (read only when a list needs trending, see :func:`uses_trending`)."""


@dataclass(frozen=True)
class RecRequest:
    """One validated request: ``scene`` in :data:`SCENES`, ``k`` >= 1, ``diversity`` in [0, 1]."""

    scene: str
    k: int
    item_id: str | None = None
    diversity: float = 0.0
    exclude_purchased: bool = True
    strategy: str | None = None
    """Set by an experiment's arm: ``trending`` serves trending even to a user with a personal
    or neighbour list; other values follow the scene's rules above."""


@dataclass(frozen=True)
class ItemSignals:
    """Item attributes diversity can use: vectors (for MMR) and/or categories (for a cap)."""

    vectors: Mapping[str, Sequence[float]] = field(default_factory=dict)
    categories: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """One served item: its score in its source list and why it is there."""

    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Served:
    """A served list: ``strategy`` is ``online_mf`` (personal first), ``cooccurrence``
    (neighbour lists first, product and cart scenes) or ``trending``."""

    strategy: str
    items: list[Scored]
    diversified: bool = False


def recommend(
    snapshot: Snapshot, request: RecRequest, signals: ItemSignals | None = None
) -> Served:
    """The list to serve for ``request`` from ``snapshot``, at most ``request.k`` items."""
    if request.scene not in SCENES:
        raise ValueError(f"unknown scene {request.scene!r}")
    if request.scene == "product" and not request.item_id:
        raise ValueError("scene 'product' needs an item_id")
    excluded = _excluded(snapshot.features, request)
    if request.scene in ("product", "cart") and request.strategy != "trending":
        served = _from_neighbours(snapshot, request, excluded)
        if served is not None:
            return served
    wants_personal = request.scene != "product" and request.strategy != "trending"
    personal = _personal(snapshot.personal, excluded) if wants_personal else []
    trending, in_category = _trending(snapshot, excluded)
    primary = personal or trending
    head, diversified = _diversify(primary, request, signals)
    if personal:
        items = [Scored(item, score, "personal") for item, score in head]
    else:
        items = [Scored(item, score, _trending_reason(item, in_category)) for item, score in head]
    if len(items) < request.k and primary is personal:
        taken = {item for item, _ in head}
        padding = [(i, s) for i, s in trending if i not in taken][: request.k - len(items)]
        items += [Scored(i, s, _trending_reason(i, in_category)) for i, s in padding]
    return Served("online_mf" if personal else "trending", items, diversified)


def uses_trending(served: Served) -> bool:
    """Whether ``served`` holds trending items (so per-category trending could improve it)."""
    return any(scored.reason == "trending" for scored in served.items)


def preferred_categories(features: Mapping[str, Any] | None, n: int = 3) -> list[str]:
    """The shopper's ``n`` most counted categories, most counted first (ties by name).

    >>> preferred_categories({"categories": {"tea": 2, "soap": 5, "milk": 2}}, 2)
    ['soap', 'milk']
    >>> preferred_categories(None)
    []
    """
    counts = (features or {}).get("categories")
    if not isinstance(counts, dict):
        return []
    ranked = [(str(c), n) for c, n in counts.items() if isinstance(n, (int, float)) and n > 0]
    return [c for c, _ in sorted(ranked, key=lambda cn: (-cn[1], cn[0]))[:n]]


def blend(lists: Sequence[Sequence[tuple[str, float]]], n: int) -> Ranked:
    """At most ``n`` items taken in turn from each of ``lists`` (first list first), no repeats.

    >>> blend([[("a", 3.0), ("b", 2.0)], [("c", 9.0), ("a", 1.0)]], 3)
    [('a', 3.0), ('c', 9.0), ('b', 2.0)]
    """
    out: Ranked = []
    seen: set[str] = set()
    for row in zip_longest(*lists):
        for entry in row:
            if entry is not None and entry[0] not in seen:
                seen.add(entry[0])
                out.append(entry)
                if len(out) >= n:
                    return out
    return out


def _trending(snapshot: Snapshot, excluded: set[str]) -> tuple[Ranked, set[str]]:
    """Category trending then global trending, minus ``excluded`` and repeats; and the items
    that came from the category lists."""
    in_category = {i for i, _ in snapshot.category_trending if i not in excluded}
    ranked = [(i, s) for i, s in snapshot.category_trending if i in in_category]
    ranked += [(i, s) for i, s in snapshot.trending if i not in excluded and i not in in_category]
    return ranked, in_category


def _trending_reason(item: str, in_category: set[str]) -> str:
    return "popular_in_category" if item in in_category else "trending"


def _from_neighbours(snapshot: Snapshot, request: RecRequest, excluded: set[str]) -> Served | None:
    """The product or cart list built on neighbour lists; ``None`` when they offer nothing."""
    if request.scene == "product":
        sources, reason = [str(request.item_id)], "similar"
    else:
        sources, reason = cart_items(snapshot.features), "with_cart"
    excluded = excluded | set(sources)
    merged = _merge([snapshot.neighbours.get(item, ()) for item in sources], excluded)
    if not merged:
        return None
    head = [Scored(item, score, reason) for item, score in merged]
    if request.scene == "cart":
        personal = _personal(snapshot.personal, excluded)
        head = _interleave(head, [Scored(i, s, "personal") for i, s in personal])
    items = head[: request.k]
    if len(items) < request.k:
        taken = {s.item_id for s in items}
        trending, in_category = _trending(snapshot, excluded)
        padding = [(i, s) for i, s in trending if i not in taken][: request.k - len(items)]
        items += [Scored(i, s, _trending_reason(i, in_category)) for i, s in padding]
    return Served("cooccurrence", items)


def cart_items(features: Mapping[str, Any] | None) -> list[str]:
    """The items in the user's cart feature, newest first (empty when unknown).

    >>> cart_items({"cart": ["a", 7]}), cart_items(None)
    (['7', 'a'], [])
    """
    cart = (features or {}).get("cart")
    return [str(item) for item in reversed(cart)] if isinstance(cart, list) else []


def _merge(lists: Sequence[Sequence[tuple[str, float]]], excluded: set[str]) -> Ranked:
    """Sum of each item's scores over ``lists``, best first (ties: first seen first)."""
    totals: dict[str, float] = {}
    for ranked in lists:
        for item, score in ranked:
            if item not in excluded:
                totals[item] = totals.get(item, 0.0) + score
    order = sorted(totals.items(), key=lambda kv: -kv[1])
    return [(item, round(score, 5)) for item, score in order]


def _interleave(first: list[Scored], second: list[Scored]) -> list[Scored]:
    """``first[0], second[0], first[1], ...`` without repeats; the longer one's tail last."""
    out: list[Scored] = []
    seen: set[str] = set()
    for pair in zip_longest(first, second):
        for scored in pair:
            if scored is not None and scored.item_id not in seen:
                seen.add(scored.item_id)
                out.append(scored)
    return out


def _excluded(features: Mapping[str, Any] | None, request: RecRequest) -> set[str]:
    """Items not to show: purchased ones, the cart scene's recent ones, the viewed product."""
    features = features or {}
    excluded: set[str] = set()
    if request.exclude_purchased:
        excluded.update(str(i) for i in features.get("purchased") or ())
    if request.scene == "cart":
        excluded.update(str(i) for i in features.get("purchased") or ())
        excluded.update(str(i) for i in features.get("recent") or ())
    if request.item_id:
        excluded.add(request.item_id)
    return excluded


def _personal(rec: RecList | None, excluded: set[str]) -> Ranked:
    """The personal list minus exclusions; empty for a missing or cold (trending) list."""
    if rec is None or rec.strategy != "online_mf":
        return []
    return [(item, score) for item, score in rec.items if item not in excluded]


def _diversify(
    ranked: Ranked, request: RecRequest, signals: ItemSignals | None
) -> tuple[Ranked, bool]:
    """The first ``k`` of ``ranked``, re-ranked when diversity is asked for and has data."""
    if request.diversity <= 0 or signals is None or len(ranked) <= 1:
        return ranked[: request.k], False
    items = [item for item, _ in ranked]
    scores = dict(ranked)
    if all(item in signals.vectors for item in items):
        vectors = np.array([signals.vectors[item] for item in items], dtype=np.float64)
        order = mmr(items, [s for _, s in ranked], vectors, request.diversity, request.k)
    elif any(item in signals.categories for item in items):
        cap = cap_for_lambda(request.diversity, request.k)
        order = cap_per_category(items, signals.categories, cap, request.k)
    else:
        return ranked[: request.k], False
    return [(item, scores[item]) for item in order], True
