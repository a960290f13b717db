"""The repeat ("buy it again") term of the personal score, and top-N retrieval with it.

For rebuy catalogues (groceries) the personal score of item i for user u is::

    score(u, i) = <p_u, q_i> + b_i
                  + [n_ui > 0] * (weight * log(1 + n_ui) + rebuy_weight * r_i + offset)

where ``n_ui`` is the user's (optionally decaying) interaction count of the item
(:class:`~online_models.repeat_counts.RepeatCounts`) and ``r_i`` the item's rebuy rate over
all users as a centred logit (:class:`~online_models.rebuy_rates.ItemRebuyRates`; milk is
rebought, a cake is not). ``weight`` lifts the user's staples by how often (and, with decay,
how lately) they were bought; ``rebuy_weight`` lifts items people buy again over items they
buy once; a negative ``offset`` makes an item the user had once compete with new items on the
model's score instead of always beating them. With
``discovery_slots`` = d, at least d places of a list of n hold items the user has no count for
(when there are that many), so a strong repeat term cannot crowd discovery out.
All four at 0 is the plain model score. The streaming job serves all four parts: every
subtask counts the item rebuy rates from the purchase marks its item deltas carry
(``flink_jobs/item_sync.py``), by the rule the benchmarked strategy uses
(:mod:`online_models.repeat_aware`).

**Retrieval.** The term is non-zero only on the user's few counted items, so a list is built
from two parts rather than by adding a sparse vector to a dense score row: the best ``n``
items the user has no count for (one retrieval for the whole batch, exact or through the
clustered index, with the counted items excluded like purchased ones), and the counted items
scored exactly (a gather of at most ``max_items`` rows). Merged by score, this equals top-N of
the full score row (ties aside), so the Flink job and the prequential benchmark share one
function and one result. Stateless: the counts come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_counts import RepeatCounts

__all__ = [
    "Candidates",
    "RepeatTerm",
    "Retrieve",
    "merge_batch",
    "merge_repeats",
    "rank_with_repeats",
    "split_candidates",
]

Retrieve = Callable[[np.ndarray, list[list[int]]], tuple[np.ndarray, np.ndarray]]
"""``(user vectors B x k, excluded rows per user) -> (rows B x n, scores B x n)``, best first,
``-inf`` (and any row) past a user's candidates: :func:`~online_models.topn.top_n` or
:meth:`~online_models.candidates.ClusteredIndex.search` with ``n`` bound."""


@dataclass(frozen=True, slots=True)
class RepeatTerm:
    """Parameters of the repeat term (see the module docstring)."""

    weight: float = 0.0
    offset: float = 0.0
    discovery_slots: int = 0
    rebuy_weight: float = 0.0

    @property
    def active(self) -> bool:
        """Whether the term changes any list (all zero: the plain model score)."""
        return bool(self.weight or self.offset or self.discovery_slots or self.rebuy_weight)

    def values(
        self, counts: RepeatCounts, rebuy: ItemRebuyRates | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The user's counted items and the term added to each one's model score (``rebuy``:
        the items' rebuy rates, needed when ``rebuy_weight`` is not 0).

        >>> c = RepeatCounts(); c.add("milk", 1.0, 0); c.add("milk", 1.0, 0)
        >>> items, v = RepeatTerm(weight=2.0, offset=-1.0).values(c)
        >>> items, round(float(v[0]), 4)   # 2 * log(1 + 2) - 1
        (['milk'], 1.1972)
        """
        items, counts_now = counts.count_array()
        logits = rebuy.logits(items) if self.rebuy_weight and rebuy is not None else None
        return items, self.apply(counts_now, logits)

    def apply(self, counts_now: np.ndarray, rebuy_logits: np.ndarray | None) -> np.ndarray:
        """The term for counts ``counts_now`` and rebuy logits (float32; logits may be
        ``None`` when ``rebuy_weight`` is 0)."""
        values = self.weight * np.log1p(counts_now) + self.offset
        if self.rebuy_weight:
            if rebuy_logits is None:
                raise ValueError("a term with rebuy_weight needs the items' rebuy rates")
            values = values + self.rebuy_weight * rebuy_logits
        return np.asarray(values, np.float32)


def merge_batch(
    new_rows: np.ndarray,
    new_scores: np.ndarray,
    rep_rows: Sequence[np.ndarray],
    rep_scores: Sequence[np.ndarray],
    n: int,
    discovery_slots: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's list (B x n rows and scores, best first): counted items (``rep_*``, full
    scores) and the best uncounted ones (``new_*``, B x m, best first), merged by score with at
    least ``discovery_slots`` uncounted items when the user has that many.

    Ties: counted items first, then lower row. ``-inf`` is never listed: a user with fewer than
    ``n`` candidates gets row -1 and score ``-inf`` in the last places. Vectorised over the
    batch (a few array operations, whatever the number of users).
    """
    b = len(rep_rows)
    lengths = np.fromiter(map(len, rep_rows), np.int64, b)
    width = int(lengths.max()) if b else 0
    rs = np.full((b, width), -np.inf, np.float32)
    rr = np.full((b, width), -1, np.int64)
    if width:
        filled = np.arange(width) < lengths[:, None]
        rs[filled] = np.concatenate(rep_scores)
        rr[filled] = np.concatenate(rep_rows)
        if width > n:  # at most n counted items can make a list
            top = np.argpartition(-rs, n - 1, axis=1)[:, :n]
            rs, rr = np.take_along_axis(rs, top, 1), np.take_along_axis(rr, top, 1)
    scores = np.concatenate((rs, np.asarray(new_scores, np.float32)), axis=1)
    rows = np.concatenate((rr, np.asarray(new_rows, np.int64)), axis=1)
    is_new = np.zeros(scores.shape, bool)
    is_new[:, rs.shape[1] :] = True
    order = np.lexsort((rows, is_new, -scores), axis=1)  # by score, counted first, then row
    scores, rows, is_new = (np.take_along_axis(a, order, 1) for a in (scores, rows, is_new))
    finite = scores != -np.inf
    if discovery_slots:
        wanted = np.minimum((is_new & finite).sum(axis=1), min(discovery_slots, n))
        old_rank = np.cumsum(~is_new & finite, axis=1)
        allowed = is_new | (old_rank <= (n - wanted)[:, None])  # too many counted: cut them
        keep = np.argsort(~allowed, axis=1, kind="stable")  # allowed first, in score order
        scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    scores, rows = scores[:, :n], rows[:, :n]
    rows[scores == -np.inf] = -1
    return rows, scores


def merge_repeats(
    new_rows: np.ndarray,
    new_scores: np.ndarray,
    rep_rows: np.ndarray,
    rep_scores: np.ndarray,
    n: int,
    discovery_slots: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_batch` for one user, without the empty places.

    >>> rows, scores = merge_repeats(
    ...     np.array([5, 6, 7]), np.array([3.0, 2.0, 1.0]),
    ...     np.array([1, 2]), np.array([2.5, 0.5]), n=3)
    >>> rows.tolist(), scores.tolist()
    ([5, 1, 6], [3.0, 2.5, 2.0])
    >>> merge_repeats(np.array([5, 6, 7]), np.array([3.0, 2.0, 1.0]),
    ...               np.array([1, 2]), np.array([9.0, 8.0]), n=3, discovery_slots=2)[0].tolist()
    [1, 5, 6]
    """
    rows, scores = merge_batch(
        new_rows[None], new_scores[None], [rep_rows], [rep_scores], n, discovery_slots
    )
    kept = scores[0] != -np.inf
    return rows[0][kept], scores[0][kept]


class Candidates(NamedTuple):
    """The parts a batch's lists are merged from (see :func:`split_candidates`)."""

    new_rows: np.ndarray
    new_scores: np.ndarray
    rep_rows: list[np.ndarray]
    rep_scores: list[np.ndarray]


def split_candidates(
    vectors: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    counted_rows: Sequence[np.ndarray],
    exclude: Sequence[Sequence[int]],
    retrieve: Retrieve,
) -> Candidates:
    """For each user: the best uncounted items (one ``retrieve`` for the batch, counted and
    excluded rows left out) and the counted rows with their model scores.

    ``counted_rows`` must not hold excluded rows (the caller leaves excluded items out). A
    counted row ``>= len(factors)`` (an item the model does not know yet) scores 0.
    """
    n_items = factors.shape[0]
    skip, rep_rows, rep_scores = [], [], []
    for j, rows in enumerate(counted_rows):
        rows = np.asarray(rows, np.int64)
        known = rows < n_items
        skip.append(np.concatenate((np.asarray(exclude[j], np.int64), rows[known])))
        scores = np.zeros(len(rows), np.float32)
        scores[known] = factors[rows[known]] @ vectors[j] + bias[rows[known]]
        rep_rows.append(rows)
        rep_scores.append(scores)
    new_rows, new_scores = retrieve(vectors, skip)
    return Candidates(new_rows, new_scores, rep_rows, rep_scores)


def rank_with_repeats(
    vectors: np.ndarray,
    factors: np.ndarray,
    bias: np.ndarray,
    counted: Sequence[tuple[np.ndarray, np.ndarray]],
    exclude: Sequence[Sequence[int]],
    n: int,
    term: RepeatTerm,
    retrieve: Retrieve,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's best ``n`` rows and scores (B x n, as ``top_n``; row -1 and ``-inf`` past a
    user's candidates), the repeat term included.

    ``counted[j]`` holds user j's counted item rows and their repeat terms (the value added
    to the model score, :meth:`RepeatTerm.values`), excluded items left out; ``exclude[j]``
    rows are never listed.

    >>> from online_models.topn import top_n
    >>> q = np.array([[1.0, 0], [0, 1.0], [0.5, 0.5]], np.float32)
    >>> b = np.zeros(3, np.float32)
    >>> u = np.array([[1.0, 0]], np.float32)
    >>> retrieve = lambda v, skip: top_n(v, q, b, 2, skip)
    >>> counted = [(np.array([1]), np.array([2.0], np.float32))]   # row 1 bought: +2
    >>> rows, scores = rank_with_repeats(u, q, b, counted, [[]], 2, RepeatTerm(1), retrieve)
    >>> rows.tolist(), scores.tolist()
    ([[1, 0]], [[2.0, 1.0]])
    """
    split = split_candidates(
        vectors, factors, bias, [rows for rows, _ in counted], exclude, retrieve
    )
    rep_scores = [
        scores + np.asarray(values, np.float32)
        for scores, (_, values) in zip(split.rep_scores, counted, strict=True)
    ]
    return merge_batch(
        split.new_rows, split.new_scores, split.rep_rows, rep_scores, n, term.discovery_slots
    )
