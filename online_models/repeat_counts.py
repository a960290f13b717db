"""One user's purchase counts per item, the input of the repeat ("buy it again") term.

Each purchase adds 1 to the user's count of the item (:data:`COUNTED_ACTIONS`). With a
half-life ``h`` the counts decay in event time: an interaction ``t`` ms before the reference
time counts ``2 ** (-t / h)``. The decay is kept lazily: every count is stored scaled to the
user's reference timestamp ``ref_ts``, so an event touches one entry and reading the counts
at time ``now`` multiplies them all by one factor ``2 ** (-(now - ref_ts) / h)``; the reference
moves forward (all entries rescaled once) when the scale would exceed ``2 ** 64``.

The counts are read at the user's latest counted event (``last_ts``), so they change only
with the user's own events: the Flink job and a standalone replay read the same values.

State kept (bounded): at most ``max_items`` entries (item id -> scaled count), ordered from
least to most recently touched; a new item beyond the bound evicts the least recently touched
one. Plus two timestamps. Encoded for Flink state by :meth:`RepeatCounts.to_list`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["COUNTED_ACTIONS", "RepeatCounts"]

_MAX_EXPONENT = 64.0


COUNTED_ACTIONS: Mapping[str, float] = MappingProxyType({"purchase": 1.0})
"""What an event adds to a count, by action: purchases only, since buying again is what the
repeat term predicts (views and cart adds of an item are the model's business)."""


class RepeatCounts:
    """Bounded, optionally decaying per-item interaction counts of one user.

    >>> c = RepeatCounts(max_items=2)
    >>> c.add("milk", 1.0, 0); c.add("tea", 0.5, 0); c.add("milk", 1.0, 0)
    >>> c.counts()
    (['tea', 'milk'], [0.5, 2.0])
    >>> c.add("eggs", 1.0, 0)   # full: tea, the least recently touched, goes
    >>> c.counts()[0]
    ['milk', 'eggs']
    >>> d = RepeatCounts(half_life_s=3600)
    >>> d.add("milk", 1.0, 0); d.add("milk", 1.0, 3_600_000)
    >>> d.counts()
    (['milk'], [1.5])
    """

    __slots__ = ("entries", "half_life_ms", "last_ts", "max_items", "ref_ts")

    def __init__(self, max_items: int = 200, half_life_s: float = 0.0) -> None:
        if max_items < 0 or half_life_s < 0:
            raise ValueError("max_items and half_life_s must be >= 0")
        self.max_items = max_items
        self.half_life_ms = half_life_s * 1000.0
        self.ref_ts = 0
        self.last_ts = 0
        self.entries: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, item: str, weight: float, ts: int) -> None:
        """Count ``weight`` for ``item`` at event time ``ts``; it becomes most recent."""
        if self.max_items == 0 or weight <= 0:
            return
        self.last_ts = max(self.last_ts, ts) if self.entries else ts
        value = weight
        if self.half_life_ms:
            if not self.entries:
                self.ref_ts = ts
            elif (ts - self.ref_ts) / self.half_life_ms > _MAX_EXPONENT:
                self._rebase(ts)
            value = weight * math.exp2((ts - self.ref_ts) / self.half_life_ms)
        entries = self.entries
        entries[item] = entries.pop(item, 0.0) + value
        if len(entries) > self.max_items:
            del entries[next(iter(entries))]

    def counts(self) -> tuple[list[str], list[float]]:
        """Items (least recently touched first) and their counts decayed to ``last_ts``."""
        items, values = self.count_array()
        return items, values.tolist()

    def count_array(self) -> tuple[list[str], np.ndarray]:
        """:meth:`counts` with the counts as a float64 array."""
        values = np.fromiter(self.entries.values(), np.float64, len(self.entries))
        if self.half_life_ms and len(values):
            values *= math.exp2(-(self.last_ts - self.ref_ts) / self.half_life_ms)
        return list(self.entries), values

    def _rebase(self, ts: int) -> None:
        scale = math.exp2(-(ts - self.ref_ts) / self.half_life_ms)
        self.entries = {item: v * scale for item, v in self.entries.items()}
        self.ref_ts = ts

    def to_list(self) -> list[Any]:
        """JSON-ready state: ``[ref_ts, last_ts, [item, scaled count], ...]``."""
        return [self.ref_ts, self.last_ts, *([item, v] for item, v in self.entries.items())]

    def load(self, state: list[Any]) -> RepeatCounts:
        """Restore from :meth:`to_list` output (an empty list is an empty state); entries
        beyond ``max_items`` (a lower bound than when saved) drop the least recent."""
        if state:
            self.ref_ts, self.last_ts = int(state[0]), int(state[1])
            kept = state[2:][-self.max_items :] if self.max_items else []
            self.entries = {str(item): float(v) for item, v in kept}
        return self
