"""Proposal: online MF with a repeat ("buy it again") term, for catalogues where rebuying is
normal (groceries).

The online MF alone ranks a shopper's own staples no better than the popular list does: one
SGD pass per event leaves the factors of most of a large catalogue close to their random start,
so its lists stay close to the item biases. This strategy adds one term to the score::

    score(u, i) = <p_u, q_i> + b_i + repeat_weight * log(1 + n_ui)

where ``n_ui`` is how much user u interacted with item i (action weights divided by the
largest weight, so a purchase counts 1 with the default weights). The model's learning is
unchanged (:class:`~online_models.implicit_mf.ImplicitMF` steps); only ranking adds the term,
one sparse addition per user before top-K. With ``discovery_slots`` = d, the last d places of a
list go to the user's best items by MF alone among those they have no count for, so a large
``repeat_weight`` cannot crowd discovery out entirely. ``repeat_weight`` and ``discovery_slots``
are hyper-parameters (tuned on the tuning slice like the others); ``repeat_weight=0`` gives
:class:`~online_models.strategies.OnlineMFStrategy`.

State added: at most ``max_counted`` counts per user (the least recently touched item is
dropped when full), i.e. what the job's per-user ``purchased`` feature keeps, plus a count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from online_models.implicit_mf import DEFAULT_ACTION_WEIGHTS
from online_models.strategies import OnlineMFStrategy, fill

__all__ = ["RepeatAwareMFStrategy"]


class RepeatAwareMFStrategy(OnlineMFStrategy):
    """:class:`OnlineMFStrategy` whose scores add ``repeat_weight * log1p(count)``.

    >>> s = RepeatAwareMFStrategy(repeat_weight=8.0, n_factors=4, seed=1)
    >>> for item in ["milk", "bread", "milk", "eggs"]:
    ...     s.learn("ann", item, "purchase", 0)
    >>> s.recommend(["ann"], 1)
    [['milk']]
    """

    def __init__(
        self,
        repeat_weight: float = 2.0,
        max_counted: int = 500,
        discovery_slots: int = 0,
        name: str = "online_mf_repeat",
        **params: Any,
    ):
        super().__init__(name=name, **params)
        self.repeat_weight = repeat_weight
        self.max_counted = max_counted
        self.discovery_slots = discovery_slots
        self.counted: dict[str, dict[str, float]] = {}
        weights = params.get("action_weights") or DEFAULT_ACTION_WEIGHTS
        self._unit = max(weights.values(), default=1.0) or 1.0

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """The MF step, then the user's count of ``item`` (moved to most recent)."""
        weight = self.model.weight_of(action)
        super().learn(user, item, action, ts)
        if weight <= 0:
            return
        counts = self.counted.setdefault(user, {})
        counts[item] = counts.pop(item, 0.0) + weight / self._unit
        if len(counts) > self.max_counted:
            del counts[next(iter(counts))]

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """MF + bias + repeat term over the whole item table for warm users; the last
        ``discovery_slots`` places go to the best items by MF that the user has no count for."""
        out = super().recommend(users, k, exclude)
        table = self.model.items
        warm = [i for i, u in enumerate(users) if u in self.counted and u in self.model.users]
        if not warm or not len(table) or self.repeat_weight == 0:
            return out
        skips = [exclude[i] if exclude else set() for i in range(len(users))]
        keep = k - min(self.discovery_slots, k)
        new: list[list[str]] = [[] for _ in users]
        if keep < k:
            owned = [s | set(self.counted.get(u, ())) for s, u in zip(skips, users, strict=True)]
            new = super().recommend(users, k, owned)
        scores = self._scores([users[i] for i in warm], [skips[i] for i in warm])
        n = min(k, scores.shape[1])
        best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        for j, i in enumerate(warm):
            row = best[j][np.argsort(-scores[j, best[j]], kind="stable")]
            ranked = [table.ids[r] for r in row if scores[j, r] > -np.inf]
            tail = [x for x in new[i] if x not in ranked[:keep]][: k - keep]
            ranked = [*ranked[:keep], *tail, *ranked[keep:]]
            out[i] = fill(ranked, out[i], k, skips[i])
        return out

    def _scores(self, users: list[str], skips: list[set[str]]) -> np.ndarray:
        """Scores of every item for each user (excluded items at -inf)."""
        table = self.model.items
        scores = np.stack([self.model.users[u] for u in users]) @ table.factors.T
        scores += table.bias
        for j, user in enumerate(users):
            counts = self.counted[user]
            rows = [table.index[x] for x in counts]
            scores[j, rows] += self.repeat_weight * np.log1p(np.fromiter(counts.values(), float))
            if skips[j]:
                scores[j, [table.index[x] for x in skips[j] if x in table.index]] = -np.inf
        return scores
