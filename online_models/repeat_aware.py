"""A factor-model strategy with the repeat ("buy it again") term added to its scores.

Wraps a strategy that exposes a :class:`~online_models.strategies.FactorView` (our online MF,
the scheduled batch ALS) and ranks with :mod:`online_models.repeat_term`: model score plus
``weight * log1p(count) + rebuy_weight * item rebuy logit + offset`` on the items the user has
a count for, at least
``discovery_slots`` places for items new to the user. The base model learns exactly as
without the wrapper; only ranking changes, so one pass over a stream can rank with many
terms at once (:meth:`RepeatAwareStrategy.recommend_terms`, used for tuning). Lists are
exact (one matrix product per batch); the Flink job ranks with the same functions, through
its clustered index on large catalogues.

State added to the base's: one :class:`~online_models.repeat_counts.RepeatCounts` per user
(at most ``max_items`` items each), as the job keeps in the user's Flink state, and one
:class:`~online_models.rebuy_rates.ItemRebuyRates` over all users (at most
``rebuy_items_max`` items; the job counts the same rates, by the same rule, from the purchase
marks its item deltas carry: ``flink_jobs/item_sync.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_counts import COUNTED_ACTIONS, RepeatCounts
from online_models.repeat_term import RepeatTerm, merge_batch, split_candidates
from online_models.strategies import FactorView, fill
from online_models.topn import top_n

__all__ = ["FactorStrategy", "RepeatAwareStrategy"]


class FactorStrategy(Protocol):
    """A strategy whose lists come from a factor model it can show."""

    name: str

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]: ...

    def learn(self, user: str, item: str, action: str, ts: int) -> None: ...

    def factor_view(self, users: list[str]) -> FactorView | None: ...


class RepeatAwareStrategy:
    """``base`` ranked with a :class:`RepeatTerm` over the users' interaction counts.

    >>> from online_models.strategies import OnlineMFStrategy
    >>> s = RepeatAwareStrategy(OnlineMFStrategy(n_factors=4, seed=1), RepeatTerm(weight=8.0))
    >>> for item in ["milk", "bread", "milk", "eggs"]:
    ...     s.learn("ann", item, "purchase", 0)
    >>> s.recommend(["ann"], 1)
    [['milk']]
    """

    def __init__(
        self,
        base: FactorStrategy,
        term: RepeatTerm,
        max_items: int = 200,
        half_life_s: float = 0.0,
        name: str | None = None,
        rebuy_items_max: int = 1_000_000,
    ):
        self.base = base
        self.term = term
        self.name = name or f"{base.name}_repeat"
        self.max_items = max_items
        self.half_life_s = half_life_s
        self.units = COUNTED_ACTIONS
        self.counts: dict[str, RepeatCounts] = {}
        self.rebuy = ItemRebuyRates(rebuy_items_max)

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """The base's step, then (for a purchase) the user's count of ``item`` and the item's
        rebuy rate (a rebuy when the user's counts still hold the item)."""
        self.base.learn(user, item, action, ts)
        unit = self.units.get(action, 0.0)
        if unit > 0:
            counts = self.counts.get(user)
            if counts is None:
                counts = self.counts[user] = RepeatCounts(self.max_items, self.half_life_s)
            self.rebuy.add(item, item in counts.entries)
            counts.add(item, unit, ts)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """Top-``k`` with this strategy's term."""
        return self.recommend_terms(users, k, exclude, [self.term])[0]

    def recommend_terms(
        self,
        users: list[str],
        k: int,
        exclude: list[set[str]] | None,
        terms: Sequence[RepeatTerm],
    ) -> list[list[list[str]]]:
        """The users' lists under each of ``terms`` (one retrieval for all of them); users
        the base cannot rank get its own (popularity) list."""
        if not any(t.active for t in terms):
            lists = self.base.recommend(users, k, exclude)
            return [lists for _ in terms]
        skips = [exclude[i] if exclude else set() for i in range(len(users))]
        view = self.base.factor_view(users)
        warm = view.warm if view is not None else []
        lists = self._fallback(users, k, skips, [i for i in range(len(users)) if i not in warm])
        if view is None:
            return [list(lists) for _ in terms]
        n_items = len(view.factors)
        extra: list[str] = []  # counted items the model does not know: rows past n_items
        counted, kept = [], []
        for i in warm:
            counts = self.counts.get(users[i]) or RepeatCounts(0)
            items = list(counts.entries)
            keep = [j for j, x in enumerate(items) if x not in skips[i]]
            user_rows = []
            for x in (items[j] for j in keep):
                row = view.item_rows.get(x, n_items)
                if row >= n_items:
                    row = n_items + len(extra)
                    extra.append(x)
                user_rows.append(row)
            counted.append(np.asarray(user_rows, np.int64))
            kept.append((counts, np.asarray(keep, np.int64)))
        exclude_rows = [
            [view.item_rows[x] for x in skips[i] if view.item_rows.get(x, n_items) < n_items]
            for i in warm
        ]
        split = split_candidates(
            view.vectors,
            view.factors,
            view.bias,
            counted,
            exclude_rows,
            lambda v, skip: top_n(v, view.factors, view.bias, k, skip),
        )
        rebuys = any(t.rebuy_weight for t in terms)
        inputs = []  # per warm user: counts now and rebuy logits of the kept counted items
        for counts, at in kept:
            items, now = counts.count_array()
            logits = self.rebuy.logits([items[j] for j in at]) if rebuys else None
            inputs.append((now[at], logits))
        out = []
        for term in terms:
            term_lists = list(lists)
            rep_scores = [
                scores + term.apply(*values)
                for scores, values in zip(split.rep_scores, inputs, strict=True)
            ]
            rows, scores = merge_batch(
                split.new_rows, split.new_scores, split.rep_rows, rep_scores, k,
                term.discovery_slots,
            )  # fmt: skip
            for j, i in enumerate(warm):
                listed = rows[j][scores[j] != -np.inf].tolist()
                ids = [view.ids[r] if r < n_items else extra[r - n_items] for r in listed]
                if len(ids) < k:  # a tiny catalogue: pad with the base's list
                    ids = fill(ids, self._fallback(users, k, skips, [i])[i], k, skips[i])
                term_lists[i] = ids
            out.append(term_lists)
        return out

    def _fallback(
        self, users: list[str], k: int, skips: list[set[str]], positions: list[int]
    ) -> list[list[str]]:
        """The base's lists for the users at ``positions`` (others: empty)."""
        lists: list[list[str]] = [[] for _ in users]
        if positions:
            chosen = [users[i] for i in positions]
            ranked = self.base.recommend(chosen, k, [skips[i] for i in positions])
            for i, items in zip(positions, ranked, strict=True):
                lists[i] = items
        return lists
