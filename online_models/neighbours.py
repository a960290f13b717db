"""Item-to-item neighbours ("similar items"), learnt one event at a time: bounded, decayed.

Two pure pieces, one per side of the streaming job:

:class:`ItemContext` (one per user): the user's last ``size`` distinct items, each with the
event time and the largest action weight seen for it. :meth:`ItemContext.push` gives the
*context* of a new event on item ``y``: every other remembered item ``x`` the user touched
at most ``gap_ms`` before (or after, for an out-of-order event) with the pair weight
``sqrt(w_y * w_x)`` (two purchases count more than two views), then makes ``y`` the newest.
State: at most ``size`` ``(item, ts, weight)`` entries.

:class:`NeighbourCounts` (one per item ``y``): ``n``, the decayed sum of the weights of the
events on ``y``, and per neighbour ``x`` the decayed sum of pair weights ``c(x)`` plus the
latest known popularity ``p(x)`` of ``x``. Decay is exponential in event time with half-life
``half_life_s``; values are stored relative to a per-item landmark time, so an update
touches only the neighbours in its context (no pass over all of them), and are rescaled
when the landmark is more than 32 half-lives old. The ranked list :meth:`NeighbourCounts.top`
scores ``x`` by ``c(x) / sqrt(max(n, 1) * max(p(x), 1))``: a cosine-like normalisation, so an
item everybody touches (large ``p``) does not top every list, and scores of different items'
lists are comparable (a cart merges several).

Cheap "did the list change?" test. The order of ``x`` on ``y``'s list depends only on
``r(x) = c(x) / sqrt(max(p(x), 1))``: the own weight ``n`` and the decay scale every score of
the list by one common factor. An event changes ``r`` only for the items of its context. So
:meth:`NeighbourCounts.publish` returns, with the ranked list, a :class:`ListMark`: the ``r``
of the list's last (``k``-th) entry and the common factor. :meth:`NeighbourCounts.add` given
that mark answers whether the published list may now be out of date: some context item's
``r`` is (or was, before the update) at least the mark's threshold, a pruning dropped
neighbours, or the common factor moved by more than ``SCALE_TOLERANCE`` (5 %). Otherwise the
published list still holds the right items in the right order with scores within 5 %, and
the caller need not rank and write it again. A list shorter than ``k`` changes with any
context item. The test costs one division per context item.

Memory bound (eviction rule): an item keeps at most ``2 * max_neighbours`` neighbours. When
one more arrives, the ``max_neighbours`` with the largest decayed pair weight are kept and the
rest dropped (ties: smaller item id kept), so pruning costs ``O(max_neighbours log
max_neighbours)`` once per ``max_neighbours`` new neighbours. A pruned pair restarts from zero
if it comes back: kept weights are lower bounds for the strong pairs, which is what a top-K
list needs. Pruning ranks by evidence (pair weight), not by the normalised score, so a single
co-occurrence with a rarely seen item cannot push out well-supported neighbours. In memory
only (not part of :meth:`NeighbourCounts.to_dict`), an instance that has published a list
also keeps each neighbour's ranking key ``-r(x)`` (one float per neighbour, so at most
``2 * max_neighbours``), updated by :meth:`NeighbourCounts.add` for its context items: a
counts object that stays in memory between events ranks its next list by sorting those keys,
without recomputing ``r`` for every neighbour.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SCALE_TOLERANCE", "ItemContext", "ListMark", "NeighbourCounts"]

_RESCALE_HALF_LIVES = 32.0
SCALE_TOLERANCE = 0.05
"""Largest relative drift of a published list's scores before :meth:`NeighbourCounts.add`
reports it out of date although its order did not change."""


class ItemContext:
    """The last ``size`` distinct items of one user, with time and weight, oldest first.

    >>> ctx = ItemContext(size=2, gap_ms=60_000)
    >>> ctx.push("tea", 0, 1.0)
    []
    >>> ctx.push("milk", 10_000, 4.0)
    [('tea', 2.0)]
    >>> ctx.push("cups", 200_000, 1.0)   # more than gap_ms after milk: a new session
    []
    >>> [item for item, _, _ in ctx.entries]   # bounded to size=2, newest last
    ['milk', 'cups']
    """

    __slots__ = ("entries", "gap_ms", "size")

    def __init__(self, size: int = 5, gap_ms: int = 1_800_000) -> None:
        if size < 0 or gap_ms < 0:
            raise ValueError("size and gap_ms must be >= 0")
        self.size, self.gap_ms = size, gap_ms
        self.entries: list[list[Any]] = []  # [item, ts, weight], oldest first

    def push(self, item: str, ts: int, weight: float) -> list[tuple[str, float]]:
        """The context of an event on ``item``, newest first; then ``item`` becomes newest."""
        context = [
            (other, math.sqrt(weight * w))
            for other, t, w in reversed(self.entries)
            if other != item and abs(ts - t) <= self.gap_ms
        ]
        previous = next((e for e in self.entries if e[0] == item), None)
        if previous is not None:
            self.entries.remove(previous)
            weight = max(weight, previous[2])
            ts = max(ts, previous[1])
        self.entries.append([item, ts, weight])
        del self.entries[: max(0, len(self.entries) - self.size)]
        return context

    def to_list(self) -> list[list[Any]]:
        """JSON-ready state."""
        return self.entries

    def load(self, entries: Iterable[Iterable[Any]]) -> ItemContext:
        """Restore from :meth:`to_list` output (cut to ``size``)."""
        loaded = [[str(i), int(t), float(w)] for i, t, w in entries]
        self.entries = loaded[max(0, len(loaded) - self.size) :]
        return self


@dataclass(frozen=True, slots=True)
class ListMark:
    """What a published list of one item depends on (see :meth:`NeighbourCounts.publish`).

    ``landmark``: the time the counts' stored values were relative to; ``threshold``: the
    ranking value ``r`` of the list's last entry (``-inf`` when the list is shorter than asked,
    so every context item changes it); ``scale``: the common factor of its scores.
    """

    landmark: int | None
    threshold: float
    scale: float


class NeighbourCounts:
    """Decayed co-occurrence weights of one item with its neighbours, bounded.

    >>> nb = NeighbourCounts(max_neighbours=2, half_life_s=3600)
    >>> nb.add(0, 1.0, [("a", 1.0, 10.0), ("b", 1.0, 1.0)])   # no list published yet
    True
    >>> nb.top(2)   # same evidence: the less popular neighbour scores higher
    [('b', 1.0), ('a', 0.31623)]
    >>> _ = nb.add(3_600_000, 1.0, [("a", 1.0, 0.0)])   # one half-life later; 0 = unknown
    >>> nb.decayed("a"), nb.decayed("b")
    (1.5, 0.5)
    """

    __slots__ = ("_keys", "half_life_ms", "landmark", "max_neighbours", "n", "now", "pairs", "pops")

    def __init__(self, max_neighbours: int = 100, half_life_s: float = 7 * 86400) -> None:
        if max_neighbours < 1 or half_life_s <= 0:
            raise ValueError("max_neighbours must be >= 1 and half_life_s > 0")
        self.max_neighbours = max_neighbours
        self.half_life_ms = half_life_s * 1000.0
        self.landmark: int | None = None  # event time (ms) the stored values are relative to
        self.now = 0  # largest event time seen (ms)
        self.n = 0.0  # decayed weight of the item's own events, in landmark units
        # x -> pair weight in landmark units, and x -> p(x): two flat dicts with the same keys
        # in the same order (str -> float only, so the cyclic garbage collector never scans
        # them, and a snapshot decodes without one list per neighbour)
        self.pairs: dict[str, float] = {}
        self.pops: dict[str, float] = {}
        # x -> -r(x) for every neighbour, built by the first publish() and kept up to date by
        # add() from then on (None: not built, or dropped by a prune, rescale or load)
        self._keys: dict[str, float] | None = None

    def add(
        self,
        ts: int,
        weight: float,
        context: Iterable[tuple[str, float, float]],
        mark: ListMark | None = None,
    ) -> bool:
        """One event of weight ``weight`` on this item at ``ts`` with its context
        ``(x, pair weight, popularity of x or 0 when unknown)``.

        Returns whether the list published with ``mark`` may be out of date now (always
        True without a mark; see the module docstring).
        """
        if self.landmark is None:
            self.landmark = ts
        elif (ts - self.landmark) / self.half_life_ms > _RESCALE_HALF_LIVES:
            self._rescale(ts)
        self.now = max(self.now, ts)
        grow = 2.0 ** ((ts - self.landmark) / self.half_life_ms)
        self.n += weight * grow
        stale = mark is None or mark.landmark != self.landmark
        threshold = math.inf if mark is None else mark.threshold
        pairs, pops, keys = self.pairs, self.pops, self._keys
        for other, pair_weight, popularity in context:
            pair = pairs.get(other)
            if pair is None:
                pair = pairs[other] = pair_weight * grow
                pop = pops[other] = float(popularity)
            else:
                pop = pops[other]
                stale = stale or _rank(pair, pop) >= threshold  # on the list before
                pair = pairs[other] = pair + pair_weight * grow
                if popularity > 0:
                    pop = pops[other] = float(popularity)
            rank = _rank(pair, pop)
            if keys is not None:
                keys[other] = -rank
            stale = stale or rank >= threshold  # on the list now
        if len(pairs) > 2 * self.max_neighbours:
            self._prune()
            stale = True
        if not stale and pairs and mark is not None:  # no neighbours: no scores to drift
            stale = abs(self.scale() / mark.scale - 1.0) > SCALE_TOLERANCE
        return stale

    def decayed(self, other: str) -> float:
        """The pair weight of ``other`` decayed to the latest event time (0 when unknown)."""
        pair = self.pairs.get(other)
        return 0.0 if pair is None else pair * self._factor()

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` best neighbours with their normalised scores (5 decimals), best first."""
        return self.publish(k)[0]

    def publish(self, k: int) -> tuple[list[tuple[str, float]], ListMark]:
        """:meth:`top` and the :class:`ListMark` to pass to :meth:`add` afterwards.

        >>> nb = NeighbourCounts(half_life_s=3600)
        >>> nb.add(0, 1.0, [("a", 2.0, 1.0), ("b", 1.0, 1.0)])
        True
        >>> ranked, mark = nb.publish(1)
        >>> ranked, mark.threshold
        ([('a', 2.0)], 2.0)
        >>> nb.add(1, 0.0, [("c", 1.0, 4.0)], mark)   # r(c) = 0.5 < 2: a stays first
        False
        >>> nb.add(2, 0.0, [("b", 1.5, 1.0)], mark)   # r(b) = 2.5 >= 2: b overtakes a
        True
        """
        scale, keys = self.scale(), self._keys
        if keys is None:  # once per decoded state: add() keeps the keys from then on
            sqrt = math.sqrt
            keys = self._keys = {  # _rank inlined
                other: -(pair / sqrt(popularity)) if popularity > 1.0 else -pair
                for other, pair, popularity in zip(
                    self.pairs, self.pairs.values(), self.pops.values(), strict=True
                )
            }
        if len(keys) <= 4 * k:  # two C sorts: by item, then stably by -r (ties: smaller x)
            order = sorted(keys)
            order.sort(key=keys.__getitem__)
            top = order[:k]
        else:  # a large neighbour_max: select before sorting
            top = [x for _, x in heapq.nsmallest(k, zip(keys.values(), keys, strict=True))]
        ranks = list(map(keys.__getitem__, top))  # -r, best first
        threshold = -ranks[-1] if top and len(top) == k else -math.inf
        scores = np.round(np.array(ranks, np.float64) * -scale, 5).tolist()  # 5 decimals
        return list(zip(top, scores, strict=True)), ListMark(self.landmark, threshold, scale)

    def scale(self) -> float:
        """The factor from a neighbour's ranking value ``r`` to its score."""
        factor = self._factor()
        return factor / math.sqrt(max(self.n * factor, 1.0))

    def __len__(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: the pair weights ``w`` by neighbour, and the neighbours'
        popularities ``p`` as a list in the same order (each neighbour's id written once).
        ``w`` is the live dict: encode the result, do not keep it."""
        return {
            "l": self.landmark, "t": self.now, "n": self.n,
            "w": self.pairs, "p": list(self.pops.values()),
        }  # fmt: skip

    def load(self, state: dict[str, Any]) -> NeighbourCounts:
        """Restore from :meth:`to_dict` output, or from the earlier layout ``"c": {x: [pair
        weight, p(x)]}`` (state written before the flat layout)."""
        self.landmark, self.now, self.n = state["l"], state["t"], state["n"]
        if "w" in state:
            self.pairs = state["w"]
            self.pops = dict(zip(self.pairs, state["p"], strict=True))
        else:
            entries = state["c"]
            self.pairs = {x: float(entry[0]) for x, entry in entries.items()}
            self.pops = {x: float(entry[1]) for x, entry in entries.items()}
        self._keys = None
        if len(self.pairs) > 2 * self.max_neighbours:  # max_neighbours was lowered
            self._prune()
        return self

    def _factor(self) -> float:
        """Stored value -> value decayed to ``now``."""
        if self.landmark is None:
            return 1.0
        return 2.0 ** (-(self.now - self.landmark) / self.half_life_ms)

    def _rescale(self, ts: int) -> None:
        assert self.landmark is not None
        shrink = 2.0 ** (-(ts - self.landmark) / self.half_life_ms)
        self.n *= shrink
        self.pairs = {other: pair * shrink for other, pair in self.pairs.items()}
        self.landmark, self._keys = ts, None

    def _prune(self) -> None:
        keep = heapq.nsmallest(
            self.max_neighbours, self.pairs.items(), key=lambda kv: (-kv[1], kv[0])
        )
        pops = self.pops
        self.pairs = dict(keep)
        self.pops = {other: pops[other] for other in self.pairs}
        self._keys = None


def _rank(pair: float, popularity: float) -> float:
    """Ranking value ``r`` of a neighbour from its pair weight (landmark units) and popularity."""
    return pair / math.sqrt(popularity) if popularity > 1.0 else pair
