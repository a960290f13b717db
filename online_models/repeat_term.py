"""The repeat ("buy it again") term of the personal score, and top-N retrieval with it.

For rebuy catalogues (groceries) the personal score of item i for user u is::

    score(u, i) = <p_u, q_i> + b_i + [n_ui > 0] * (weight * log(1 + n_ui) + offset)

where ``n_ui`` is the user's (optionally decaying) interaction count of the item
(:class:`~online_models.repeat_counts.RepeatCounts`). ``weight`` lifts the user's staples by
how often (and, with decay, how lately) they were bought; a negative ``offset`` makes an item
the user had once compete with new items on the model's score instead of always beating
them. With
``discovery_slots`` = d, at least d places of a list of n hold items the user has no count for
(when there are that many), so a strong repeat term cannot crowd discovery out.
``weight = offset = discovery_slots = 0`` is the plain model score.

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

from online_models.repeat_counts import RepeatCounts

__all__ = [
    "Candidates",
    "RepeatTerm",
    "Retrieve",
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

    @property
    def active(self) -> bool:
        """Whether the term changes any list (all zero: the plain model score)."""
        return bool(self.weight or self.offset or self.discovery_slots)

    def values(self, counts: RepeatCounts) -> tuple[list[str], np.ndarray]:
        """The user's counted items and the term added to each one's model score.

        >>> c = RepeatCounts(); c.add("milk", 1.0, 0); c.add("milk", 1.0, 0)
        >>> items, v = RepeatTerm(weight=2.0, offset=-1.0).values(c)
        >>> items, round(float(v[0]), 4)   # 2 * log(1 + 2) - 1
        (['milk'], 1.1972)
        """
        items, counts_now = counts.counts()
        values = self.weight * np.log1p(np.asarray(counts_now, np.float64)) + self.offset
        return items, values.astype(np.float32)


def merge_repeats(
    new_rows: np.ndarray,
    new_scores: np.ndarray,
    rep_rows: np.ndarray,
    rep_scores: np.ndarray,
    n: int,
    discovery_slots: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One user's list: counted items (``rep_*``, full scores) and the best uncounted ones
    (``new_*``), best ``n`` by score with at least ``discovery_slots`` uncounted items.

    ``-inf`` scores are never listed. Ties: counted items first, then lower row.

    >>> rows, scores = merge_repeats(
    ...     np.array([5, 6, 7]), np.array([3.0, 2.0, 1.0]),
    ...     np.array([1, 2]), np.array([2.5, 0.5]), n=3)
    >>> rows.tolist(), scores.tolist()
    ([5, 1, 6], [3.0, 2.5, 2.0])
    >>> merge_repeats(np.array([5, 6, 7]), np.array([3.0, 2.0, 1.0]),
    ...               np.array([1, 2]), np.array([9.0, 8.0]), n=3, discovery_slots=2)[0].tolist()
    [1, 5, 6]
    """
    new_ok = new_scores != -np.inf
    rep_ok = rep_scores != -np.inf
    rows = np.concatenate((rep_rows[rep_ok], new_rows[new_ok])).astype(np.int64)
    scores = np.concatenate((rep_scores[rep_ok], new_scores[new_ok])).astype(np.float32)
    is_new = np.zeros(len(rows), bool)
    is_new[int(rep_ok.sum()) :] = True
    order = np.lexsort((rows, ~is_new, -scores))  # by score, counted first, then row
    chosen = order[:n]
    wanted = min(discovery_slots, n, int(is_new.sum()))
    if int(is_new[chosen].sum()) < wanted:
        news = order[is_new[order]][:wanted]
        olds = order[~is_new[order]][: n - wanted]
        both = np.concatenate((olds, news))
        chosen = both[np.lexsort((rows[both], ~is_new[both], -scores[both]))]
    return rows[chosen], scores[chosen]


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
        skip.append(sorted({*map(int, exclude[j]), *rows[known].tolist()}))
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
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's best ``n`` rows and scores, the repeat term included.

    ``counted[j]`` holds user j's counted item rows and their repeat terms (the value added
    to the model score, :meth:`RepeatTerm.values`), excluded items left out; ``exclude[j]``
    rows are never listed.

    >>> from online_models.topn import top_n
    >>> q = np.array([[1.0, 0], [0, 1.0], [0.5, 0.5]], np.float32)
    >>> b = np.zeros(3, np.float32)
    >>> u = np.array([[1.0, 0]], np.float32)
    >>> retrieve = lambda v, skip: top_n(v, q, b, 2, skip)
    >>> counted = [(np.array([1]), np.array([2.0], np.float32))]   # row 1 bought: +2
    >>> rows, scores = rank_with_repeats(u, q, b, counted, [[]], 2, RepeatTerm(1), retrieve)[0]
    >>> rows.tolist(), scores.tolist()
    ([1, 0], [2.0, 1.0])
    """
    split = split_candidates(
        vectors, factors, bias, [rows for rows, _ in counted], exclude, retrieve
    )
    out = []
    for j, (_, values) in enumerate(counted):
        out.append(
            merge_repeats(
                split.new_rows[j],
                split.new_scores[j],
                split.rep_rows[j],
                split.rep_scores[j] + np.asarray(values, np.float32),
                n,
                term.discovery_slots,
            )
        )
    return out
