"""Item-to-item co-occurrence ("bought together"), learnt one event at a time.

Each learnt event of user u on item i adds 1 to the co-occurrence count of i with each of the
(distinct) items among u's ``recent`` last items, in both directions. A user's list sums, over
their recent items j, the neighbour counts of j (the evaluator's exclusion policy decides
whether items the user had before may appear), and is filled up to K from windowed popularity.

Memory bound: each item keeps at most ``2 * max_neighbours`` neighbour counts; when an item's
neighbours exceed that, they are pruned to the ``max_neighbours`` largest counts (ties: the
neighbour seen first stays). So the counts hold at most ``2 * max_neighbours * n_items``
entries, plus ``recent`` item ids per user and the popularity window. Pruning forgets the tail,
so a pair whose count was pruned restarts from 1: the counts kept are lower bounds for the
strong pairs, which is what ranking needs.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping

from online_models.implicit_mf import DEFAULT_ACTION_WEIGHTS
from online_models.strategies import DAY_S, Trending, fill

__all__ = ["CoOccurrenceStrategy"]


class CoOccurrenceStrategy:
    """Bounded item-to-item co-occurrence with the user's last ``recent`` items.

    >>> co = CoOccurrenceStrategy(recent=2)
    >>> for user, item in [("a", "tea"), ("a", "milk"), ("b", "tea")]:
    ...     co.learn(user, item, "purchase", 0)
    >>> co.recommend(["b"], 1)
    [['milk']]
    """

    def __init__(
        self,
        recent: int = 10,
        max_neighbours: int = 100,
        window_s: int = 7 * DAY_S,
        action_weights: Mapping[str, float] | None = None,
        name: str = "cooccurrence",
    ):
        self.name = name
        self.max_neighbours = max_neighbours
        self.weights = dict(action_weights or DEFAULT_ACTION_WEIGHTS)
        self.neighbours: dict[str, dict[str, float]] = {}
        self.recent: dict[str, deque[str]] = {}
        self._recent_max = recent
        self.trending = Trending(window_s)

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """Count ``item`` together with the user's recent items, then make it the newest."""
        weight = self.weights.get(action, 0.0)
        if weight <= 0:
            return
        self.trending.add(item, weight, ts)
        recent = self.recent.setdefault(user, deque(maxlen=self._recent_max))
        if item in recent:
            recent.remove(item)
        mine = self.neighbours.setdefault(item, {})
        for other in recent:
            mine[other] = mine.get(other, 0.0) + 1.0
            theirs = self.neighbours.setdefault(other, {})
            theirs[item] = theirs.get(item, 0.0) + 1.0
            self._bound(other, theirs)
        self._bound(item, mine)
        recent.append(item)

    def _bound(self, item: str, counts: dict[str, float]) -> None:
        """Prune ``counts`` to the ``max_neighbours`` largest once it doubled that size."""
        if len(counts) > 2 * self.max_neighbours:
            best = sorted(counts.items(), key=lambda kv: -kv[1])[: self.max_neighbours]
            self.neighbours[item] = dict(best)

    def size(self) -> int:
        """Neighbour counts held (at most ``2 * max_neighbours`` per item)."""
        return sum(len(c) for c in self.neighbours.values())

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """Items scored by summed co-occurrence with each user's recent items."""
        longest = max((len(e) for e in exclude), default=0) if exclude else 0
        popular = self.trending.top_ids(k + longest)
        out = []
        for i, user in enumerate(users):
            skip = exclude[i] if exclude else set()
            scores: dict[str, float] = {}
            for j in self.recent.get(user, ()):
                for other, count in self.neighbours.get(j, {}).items():
                    scores[other] = scores.get(other, 0.0) + count
            ranked = heapq.nlargest(k + len(skip), scores, key=scores.__getitem__)
            out.append(fill(ranked, popular, k, skip))
        return out
