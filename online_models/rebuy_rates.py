"""How often each item is bought again, over all users: the item part of the repeat term.

Milk is rebought by most households that buy it, a birthday cake by few. For every purchase
the caller says whether the user had bought the item before (a *rebuy*); per item this keeps
the purchases and the rebuys, and :meth:`ItemRebuyRates.logits` gives the item's rebuy rate as
a logit relative to the rate over all items, smoothed towards it::

    rate_i = (rebuys_i + prior * rate_all) / (purchases_i + prior)
    logit_i = log(rate_i / (1 - rate_i)) - log(rate_all / (1 - rate_all))

so an item never seen, or seen too rarely to tell, is near 0, an item that is mostly rebought
is positive and one almost never rebought is negative. ``rate_all = (rebuys + 1) /
(purchases + 2)`` over all counted purchases.

State kept (bounded): at most ``max_items`` entries (item id -> [purchases, rebuys]), ordered
from least to most recently bought; a new item beyond the bound evicts the least recently
bought one (its counts start again from zero if it comes back). Plus the two totals. A copy
saved item by item (the streaming job persists each item's two counts with its factors) is
reloaded with :meth:`ItemRebuyRates.restore`; the totals are then the sums of the reloaded
entries, equal to the saved ones unless items had been evicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ItemRebuyRates"]


class ItemRebuyRates:
    """Bounded per-item purchase and rebuy counts over all users.

    >>> r = ItemRebuyRates(prior=1.0)
    >>> for rebuy in (False, True, True, True):
    ...     r.add("milk", rebuy)
    >>> for _ in range(4):
    ...     r.add("cake", False)
    >>> milk, cake, new = r.logits(["milk", "cake", "tea"]).tolist()
    >>> milk > 0 > cake, new
    (True, 0.0)
    """

    __slots__ = ("entries", "max_items", "prior", "purchases", "rebuys")

    def __init__(self, max_items: int = 1_000_000, prior: float = 5.0) -> None:
        if max_items < 1 or prior <= 0:
            raise ValueError("max_items must be >= 1 and prior > 0")
        self.max_items = max_items
        self.prior = prior
        self.purchases = 0
        self.rebuys = 0
        self.entries: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, item: str, rebuy: bool) -> None:
        """Count one purchase of ``item``; ``rebuy``: the user had bought it before."""
        entry = self.entries.pop(item, None) or [0, 0]
        entry[0] += 1
        entry[1] += int(rebuy)
        self.entries[item] = entry  # most recent last
        self.purchases += 1
        self.rebuys += int(rebuy)
        if len(self.entries) > self.max_items:
            del self.entries[next(iter(self.entries))]

    def restore(self, item: str, purchases: int, rebuys: int) -> None:
        """Set ``item``'s counts from a saved copy (its previous counts, if any, are replaced;
        the totals follow). It becomes the most recently bought; the bound still holds.

        >>> r = ItemRebuyRates(); r.restore("milk", 4, 3); r.restore("milk", 5, 3)
        >>> r.entries["milk"], r.purchases, r.rebuys
        ([5, 3], 5, 3)
        """
        before = self.entries.pop(item, None) or [0, 0]
        self.entries[item] = [purchases, rebuys]
        self.purchases += purchases - before[0]
        self.rebuys += rebuys - before[1]
        if len(self.entries) > self.max_items:
            del self.entries[next(iter(self.entries))]

    def overall(self) -> float:
        """The rebuy rate over all counted purchases, with one pseudo-count each way."""
        return (self.rebuys + 1) / (self.purchases + 2)

    def logits(self, items: Sequence[str]) -> np.ndarray:
        """Each item's smoothed rebuy rate as a logit relative to :meth:`overall` (float32)."""
        counts = np.zeros((len(items), 2), np.float64)
        get = self.entries.get
        for j, item in enumerate(items):
            entry = get(item)
            if entry is not None:
                counts[j] = entry
        overall = self.overall()
        rate = (counts[:, 1] + self.prior * overall) / (counts[:, 0] + self.prior)
        out = np.log(rate / (1.0 - rate)) - np.log(overall / (1.0 - overall))
        out[counts[:, 0] == 0] = 0.0  # exactly 0 for an item without purchases
        return out.astype(np.float32)
