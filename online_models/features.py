"""Windowed per-user features in event time.

State kept per user (all bounded):

- ``max_ts``: the largest event timestamp seen; the user's watermark is
  ``max_ts - out_of_orderness_ms``.
- per window ``W`` (e.g. 1 h and 24 h): counts by action in ``BUCKETS`` buckets of ``W/BUCKETS``
  each; the window is the buckets covering ``(max_ts - W, max_ts]``, so it slides in steps of
  ``W/BUCKETS`` (5 min for 1 h, 2 h for 24 h). At most ``BUCKETS + 1`` buckets per window.
- lifetime counts by action, counts by category (at most ``categories_max``: when full, the
  least-counted category is evicted), the ``recent_max`` most recent items (newest last) and
  the ``purchased_max`` most recently purchased distinct items, and the ``cart_max`` items most
  recently added to the cart and not purchased since (``cart``, newest last).
- ``repeats``: the user's interaction count per item for the repeat ("buy it again") term of
  the personal score (:class:`~online_models.repeat_counts.RepeatCounts`: at most
  ``repeat_items_max`` items, each action adding its ``repeat_units`` value; off when 0).

Impressions (lists shown) are counted in the totals and windows but are not shopper choices:
they do not enter ``recent``, the category counts, or the cart/purchase lists.

Late events: an event older than the watermark is *late*. It is still learnt from by the model
and counted in the lifetime and category counts, but it is not added to the window counts
(the windows it belonged to are treated as closed, as Flink does for elements beyond the
allowed lateness); ``late`` counts such events. Events within the out-of-orderness bound are
counted in the bucket their own timestamp falls into.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from online_models.repeat_counts import RepeatCounts

__all__ = ["BUCKETS", "UserFeatures"]

BUCKETS = 12


class UserFeatures:
    """Windowed and bounded features of one user; serialisable to a JSON-ready dict.

    >>> f = UserFeatures(windows_s=(3600,), out_of_orderness_ms=60_000)
    >>> f.add("i1", "click", 10_000_000, "tea")
    True
    >>> f.add("i2", "purchase", 10_000_000 + 7_200_000, "tea")
    True
    >>> f.window_counts()[3600]
    {'purchase': 1}
    >>> f.add("i3", "view", 10_000_000, "")   # 2 h older than max_ts: late
    False
    >>> f.to_dict()["late"], f.totals
    (1, {'click': 1, 'purchase': 1, 'view': 1})
    """

    __slots__ = (
        "buckets",
        "cart",
        "cart_max",
        "categories",
        "categories_max",
        "late",
        "max_ts",
        "out_of_orderness_ms",
        "purchased",
        "purchased_max",
        "recent",
        "recent_max",
        "repeat_units",
        "repeats",
        "totals",
        "windows_s",
    )

    def __init__(
        self,
        windows_s: tuple[int, ...] = (3600, 86400),
        out_of_orderness_ms: int = 60_000,
        recent_max: int = 50,
        purchased_max: int = 500,
        categories_max: int = 50,
        cart_max: int = 20,
        repeat_items_max: int = 0,
        repeat_half_life_s: float = 0.0,
        repeat_units: Mapping[str, float] | None = None,
    ):
        self.windows_s = windows_s
        self.out_of_orderness_ms = out_of_orderness_ms
        self.recent_max = recent_max
        self.purchased_max = purchased_max
        self.categories_max = categories_max
        self.cart_max = cart_max
        self.max_ts = 0
        self.late = 0
        self.totals: dict[str, int] = {}
        self.categories: dict[str, int] = {}
        self.recent: list[str] = []
        self.purchased: list[str] = []
        self.cart: list[str] = []
        self.repeats = RepeatCounts(repeat_items_max, repeat_half_life_s)
        self.repeat_units = dict(repeat_units or {})
        # window seconds -> {bucket start ms: {action: count}}
        self.buckets: dict[int, dict[int, dict[str, int]]] = {w: {} for w in windows_s}

    def add(self, item: str, action: str, ts: int, category: str = "", count: int = 1) -> bool:
        """Record one accepted event; returns False when it was late for the windows.

        ``count`` > 1 records an event about several items at once (a list impression: one
        impression per item shown) in the totals and windows.
        """
        self.totals[action] = self.totals.get(action, 0) + count
        if action != "impression":  # shown is not chosen: only shopper actions are remembered
            if category:
                self._count_category(category)
            self._remember(item, action)
            unit = self.repeat_units.get(action, 0.0)
            if unit > 0 and self.repeats.max_items:
                self.repeats.add(item, unit, ts)
        on_time = ts >= self.max_ts - self.out_of_orderness_ms
        if not on_time:
            self.late += 1
        else:
            self.max_ts = max(self.max_ts, ts)
            for window, buckets in self.buckets.items():
                start = ts - ts % (window * 1000 // BUCKETS)
                counts = buckets.setdefault(start, {})
                counts[action] = counts.get(action, 0) + count
        self._expire()
        return on_time

    def window_counts(self) -> dict[int, dict[str, int]]:
        """Counts by action in each window ending at ``max_ts``."""
        out: dict[int, dict[str, int]] = {}
        for window, buckets in self.buckets.items():
            lower = self.max_ts - window * 1000
            totals: dict[str, int] = {}
            for start, counts in buckets.items():
                if start + window * 1000 // BUCKETS > lower:
                    for action, n in counts.items():
                        totals[action] = totals.get(action, 0) + n
            out[window] = dict(sorted(totals.items()))
        return out

    def _remember(self, item: str, action: str) -> None:
        self.recent.append(item)
        if len(self.recent) > self.recent_max:
            del self.recent[: len(self.recent) - self.recent_max]
        if action == "purchase" and self.purchased_max:
            if item in self.purchased:
                self.purchased.remove(item)
            self.purchased.append(item)
            if len(self.purchased) > self.purchased_max:
                del self.purchased[0]
        if action == "purchase" and item in self.cart:
            self.cart.remove(item)
        elif action == "add_to_cart":
            if item in self.cart:
                self.cart.remove(item)
            self.cart.append(item)
            del self.cart[: max(0, len(self.cart) - self.cart_max)]

    def _count_category(self, category: str) -> None:
        if category not in self.categories and len(self.categories) >= self.categories_max:
            del self.categories[min(self.categories, key=self.categories.__getitem__)]
        self.categories[category] = self.categories.get(category, 0) + 1

    def _expire(self) -> None:
        for window, buckets in self.buckets.items():
            width = window * 1000 // BUCKETS
            lower = self.max_ts - window * 1000 - width
            for start in [s for s in buckets if s < lower]:
                del buckets[start]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (also what the inspection CLI shows, with ``windows`` added)."""
        state = {
            "max_ts": self.max_ts,
            "late": self.late,
            "totals": self.totals,
            "categories": self.categories,
            "recent": self.recent,
            "purchased": self.purchased,
            "cart": self.cart,
            "buckets": {str(w): {str(s): c for s, c in b.items()} for w, b in self.buckets.items()},
        }
        if self.repeats.entries:  # only with the repeat term on
            state["repeats"] = self.repeats.to_list()
        return state

    def load(self, state: dict[str, Any]) -> UserFeatures:
        """Restore from :meth:`to_dict` output (windows not in the settings are dropped)."""
        self.max_ts = state["max_ts"]
        self.late = state["late"]
        self.totals = state["totals"]
        self.categories = state["categories"]
        self.recent = state["recent"]
        self.purchased = state["purchased"]
        self.cart = state.get("cart", [])[-self.cart_max :]  # absent in older state
        if self.repeats.max_items:  # absent in older state, and while the term is off
            self.repeats.load(state.get("repeats", []))
        saved = state["buckets"]
        self.buckets = {
            w: {int(s): c for s, c in saved.get(str(w), {}).items()} for w in self.windows_s
        }
        return self
