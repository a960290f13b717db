"""Windowed item popularity ("trending"), the cold-start list and a baseline.

State kept: weighted counts per item in ``BUCKETS`` time buckets covering the last
``window_s`` of event time (the clock is the largest timestamp seen), plus a running total per
item over the live buckets. When events carry a category, also each live item's category (the
latest one seen), the live items of each category, and what changed since it was last taken:
the categories whose ranking changed and the items filed under a new category. Memory is bounded
by the number of distinct items seen inside the window (one dict entry per item per bucket,
plus one category entry per item).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

__all__ = ["WindowedPopularity"]

BUCKETS = 24


class WindowedPopularity:
    """Sum of action weights per item over a sliding event-time window.

    >>> pop = WindowedPopularity(window_s=3600)
    >>> pop.add("a", 1.0, 0); pop.add("b", 4.0, 0); pop.add("a", 1.0, 1000)
    >>> pop.top(2)
    [('b', 4.0), ('a', 2.0)]
    >>> pop.add("c", 1.0, 2 * 3600 * 1000)   # two hours later: a and b expired
    >>> pop.top(5)
    [('c', 1.0)]
    """

    def __init__(self, window_s: int = 86400):
        self.window_s = window_s
        self.now = 0
        self._width = max(1, window_s * 1000 // BUCKETS)
        self._buckets: dict[int, dict[str, float]] = {}
        self._totals: dict[str, float] = {}
        self._category: dict[str, str] = {}
        self._members: dict[str, set[str]] = {}
        self._changed: set[str] = set()
        self._filed: dict[str, str] = {}

    def add(self, item: str, weight: float, ts: int, category: str | None = None) -> None:
        """Count ``weight`` for ``item`` at event time ``ts`` (too-old events are ignored);
        ``category`` (when given) files the item under it, replacing an earlier one."""
        if ts > self.now:
            self.now = ts
            self._expire()
        start = ts - ts % self._width
        if start + self._width <= self.now - self.window_s * 1000:
            return
        bucket = self._buckets.setdefault(start, {})
        bucket[item] = bucket.get(item, 0.0) + weight
        self._totals[item] = self._totals.get(item, 0.0) + weight
        if category:
            self._file(item, category)
        elif item in self._category:
            self._changed.add(self._category[item])

    def category_of(self, item: str) -> str | None:
        """The category ``item`` is filed under, ``None`` when unknown or outside the window."""
        return self._category.get(item)

    def categories(self) -> list[str]:
        """Categories with at least one item inside the window."""
        return list(self._members)

    def top_in(self, category: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` items of ``category`` with the largest windowed weight, best first.

        >>> pop = WindowedPopularity(3600)
        >>> pop.add("milk", 3.0, 0, "dairy"); pop.add("soap", 5.0, 0, "home")
        >>> pop.add("butter", 1.0, 0, "dairy")
        >>> pop.top_in("dairy", 5), pop.top_in("toys", 5)
        ([('milk', 3.0), ('butter', 1.0)], [])
        """
        members = self._members.get(category, ())
        totals = self._totals
        scored = ((item, totals[item]) for item in members)
        best = heapq.nsmallest(n, scored, key=lambda kv: (-kv[1], kv[0]))
        return [(item, round(score, 6)) for item, score in best]

    def take_changed_categories(self) -> set[str]:
        """Categories whose items or weights changed since the last call (then forgotten)."""
        changed, self._changed = self._changed, set()
        return changed

    def take_filed_items(self) -> dict[str, str]:
        """Items filed under a new category since the last call, with it (then forgotten)."""
        filed, self._filed = self._filed, {}
        return filed

    def _file(self, item: str, category: str) -> None:
        old = self._category.get(item)
        if old != category:
            if old is not None:
                self._unfile(item, old)
            self._category[item] = category
            self._members.setdefault(category, set()).add(item)
            self._filed[item] = category
        self._changed.add(category)

    def _unfile(self, item: str, category: str) -> None:
        members = self._members[category]
        members.discard(item)
        if not members:
            del self._members[category]
        self._changed.add(category)

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` items with the largest windowed weight, best first (ties by item id)."""
        totals = self._totals
        if len(totals) <= 8 * n:
            best = heapq.nsmallest(n, totals.items(), key=lambda kv: (-kv[1], kv[0]))
        else:  # large catalogues: a vectorised cut at the n-th score, then sort only the rest
            items = list(totals)
            scores = np.fromiter(totals.values(), np.float64, len(items))
            cut = np.partition(scores, len(items) - n)[len(items) - n]
            kept = [(items[i], totals[items[i]]) for i in np.flatnonzero(scores >= cut).tolist()]
            best = sorted(kept, key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(item, round(score, 6)) for item, score in best]

    def weight(self, item: str) -> float:
        """The windowed weight of ``item``, 0 when it has none inside the window."""
        return self._totals.get(item, 0.0)

    def __len__(self) -> int:
        return len(self._totals)

    def _expire(self) -> None:
        lower = self.now - self.window_s * 1000
        for start in [s for s in self._buckets if s + self._width <= lower]:
            for item, weight in self._buckets.pop(start).items():
                left = self._totals[item] - weight
                category = self._category.get(item)
                if category is not None:
                    self._changed.add(category)
                if left <= 1e-9:
                    del self._totals[item]
                    if category is not None:
                        del self._category[item]
                        self._unfile(item, category)
                else:
                    self._totals[item] = left

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        buckets = {str(s): b for s, b in self._buckets.items()}
        return {"now": self.now, "buckets": buckets, "categories": dict(self._category)}

    def load(self, state: dict[str, Any]) -> WindowedPopularity:
        """Restore from :meth:`to_dict` output."""
        self.now = state["now"]
        self._buckets = {int(s): dict(b) for s, b in state["buckets"].items()}
        self._totals = {}
        for bucket in self._buckets.values():
            for item, weight in bucket.items():
                self._totals[item] = self._totals.get(item, 0.0) + weight
        self._category, self._members, self._changed = {}, {}, set()
        for item, category in state.get("categories", {}).items():
            if item in self._totals:
                self._file(item, category)
        return self
