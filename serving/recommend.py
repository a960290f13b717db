"""What the recommendation API serves: pure ranking logic (no I/O, no web framework).

Input is one :class:`Snapshot` of what Redis holds for a user (read with one ``MGET``): the
user's personal list ``{prefix}:rec:home:{user}``, the user's features
``{prefix}:features:{user}`` and the global trending list ``{prefix}:trending``. Per scene:

- ``home``: the personal list (strategy ``online_mf``), reason ``personal``.
- ``cart``: the personal list minus every item in the user's ``recent`` and ``purchased``
  features (what is in or next to the cart already), reason ``personal``. Items bought
  together with the cart's items would be better; no such lists are in Redis yet.
- ``product`` (needs ``item_id``): trending minus that item, reason ``trending``.
  **TODO for the job**: item-to-item similarity lists (e.g. ``{prefix}:similar:{item}``) are
  not written yet, so this scene does not pretend to serve "similar items".

A missing list, a cold user's list (the job stores strategy ``trending`` for them) or a list
emptied by the exclusions falls back to the global trending list, reason ``trending``; a short
personal list is padded with trending items (reason ``trending``) up to ``k``. So nobody gets
an error or an empty list while trending has items. Items the user purchased are removed in
every scene when ``exclude_purchased`` is set (the job already excludes them when it writes
the list; the API also catches purchases made after that).

Diversity (``diversity`` in [0, 1], see :mod:`online_models.diversity`) re-ranks the primary
source (personal list, or trending) with MMR when item vectors are known for every candidate,
else with a per-category cap when item categories are known; otherwise the list is served in
relevance order and :attr:`Served.diversified` is ``False``. Redis holds neither item vectors
nor item categories today, so the API passes no :class:`ItemSignals` and never diversifies.

An experiment's arm (:attr:`RecRequest.strategy`, see :mod:`serving.assignment`) can force the
``trending`` strategy on a user who has a personal (or neighbour) list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.redis_lists import RecList
from online_models.diversity import cap_for_lambda, cap_per_category, mmr

__all__ = ["SCENES", "ItemSignals", "RecRequest", "Scored", "Served", "Snapshot", "recommend"]

SCENES: tuple[str, ...] = ("home", "cart", "product")
"""Scenes the API serves (``product`` needs an ``item_id``)."""

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class Snapshot:
    """What Redis holds for one user: personal list, features and trending (best first)."""

    personal: RecList | None
    features: Mapping[str, Any] | None
    trending: Sequence[tuple[str, float]]


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
    """A served list: ``strategy`` is ``online_mf`` (personal first) or ``trending``."""

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
    wants_personal = request.scene != "product" and request.strategy != "trending"
    personal = _personal(snapshot.personal, excluded) if wants_personal else []
    trending = [(i, s) for i, s in snapshot.trending if i not in excluded]
    primary, reason = (personal, "personal") if personal else (trending, "trending")
    head, diversified = _diversify(primary, request, signals)
    items = [Scored(item, score, reason) for item, score in head]
    if len(items) < request.k and primary is personal:
        taken = {item for item, _ in head}
        padding = [(i, s) for i, s in trending if i not in taken][: request.k - len(items)]
        items += [Scored(item, score, "trending") for item, score in padding]
    return Served("online_mf" if personal else "trending", items, diversified)


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
