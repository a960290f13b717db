"""Approximate top-N retrieval over a large, changing item table: a clustered (IVF) index.

Scoring every item for every list costs ``n_items * n_factors`` multiply-adds per list; on a
100k-item catalogue that caps one core near 2,000 lists/s. This index scores a small share of
the catalogue instead, in two stages:

1. **Candidates.** Items are grouped by k-means over their augmented vectors ``[q_i, b_i]``
   (so a centroid's score ``<[p_u, 1], c>`` estimates its members' scores, bias included). A
   user's ``n_probe`` best clusters are scored exactly against a cluster-ordered copy of the
   factors taken at the last (re)assignment, and the best ``2n`` of those go on.
2. **Re-ranking with live factors.** Those candidates plus three always-scored groups: the
   ``head`` items with the largest bias at the last assignment (popular items, which matter
   to nearly every user), the ``recent`` items that were the positive of an update lately
   (:meth:`ClusteredIndex.note_positives`: fresh interest, and the rows that moved most since
   the copy was taken), and every item added since the last assignment. Their scores are
   computed from the live table, so a served score is always the current model's score; only
   the choice of candidates is approximate. ``bench/model.py`` reports recall@N against exact
   retrieval.

State kept (bounded): centroids (``n_clusters x (k+1)``), the cluster-ordered copy of the
table and its row order (``n_items x (k+1)`` float32 + ``n_items`` int64: about the size of the
table itself), the head rows (``head``) and a ring of the last ``recent`` positive rows. The
copy goes stale as items learn; :meth:`ClusteredIndex.maybe_refresh` reassigns every item to
its nearest centroid and moves the centroids (one Lloyd step) every ``refresh_s`` seconds, or
sooner once ``max_new`` items were added, and runs a full k-means when the table has doubled
since the last one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["ClusteredIndex"]

_KMEANS_ITERATIONS = 6
_KMEANS_SAMPLE = 65_536


class ClusteredIndex:
    """IVF-style candidate retrieval for :func:`~online_models.topn.top_n`-shaped queries.

    Parameters
    ----------
    n_clusters
        Number of k-means clusters; ``None`` = about ``sqrt(n_items)`` (at least 16).
    n_probe
        Clusters scored per user (more = higher recall, slower).
    head
        Largest-bias items always scored.
    recent
        Positives of the latest updates always scored (ring buffer length).
    refresh_s
        Seconds between reassignments of every item to its nearest centroid.
    max_new
        Items added since the last assignment that force an early reassignment.
    seed
        Seed of the k-means initialisation.

    >>> rng = np.random.default_rng(0)
    >>> factors = rng.normal(size=(2000, 8)).astype(np.float32)
    >>> bias = np.zeros(2000, np.float32)
    >>> index = ClusteredIndex(n_clusters=20, n_probe=20)
    >>> index.maybe_refresh(factors, bias, now_s=0.0)
    True
    >>> user = rng.normal(size=(1, 8)).astype(np.float32)
    >>> rows, _ = index.search(user, factors, bias, n=5)
    >>> rows[0].tolist() == np.argsort(-(factors @ user[0]))[:5].tolist()  # all probed: exact
    True
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        n_probe: int = 12,
        head: int = 512,
        recent: int = 1024,
        refresh_s: float = 30.0,
        max_new: int = 4096,
        seed: int = 0,
    ) -> None:
        if n_probe < 1 or head < 0 or recent < 0 or refresh_s <= 0 or max_new < 0:
            raise ValueError("n_probe >= 1, head >= 0, recent >= 0, refresh_s > 0, max_new >= 0")
        self.n_clusters = n_clusters
        self.n_probe = n_probe
        self.head = head
        self.recent = recent
        self.refresh_s = refresh_s
        self.max_new = max_new
        self.seed = seed
        self.centroids = np.zeros((0, 0), np.float32)
        self.n_indexed = 0  # table rows covered by the last assignment
        self._kmeans_at = 0  # table size at the last full k-means
        self._refreshed_s = -math.inf
        self._copy = np.zeros((0, 0), np.float32)  # cluster-ordered [q, b] rows
        self._order = np.zeros(0, np.int64)  # table row of each copy row
        self._starts = np.zeros(1, np.int64)  # copy rows of cluster c: starts[c]:starts[c+1]
        self._head = np.zeros(0, np.int64)
        self._ring = np.full(recent, -1, np.int64)
        self._ring_pos = 0

    @property
    def built(self) -> bool:
        """Whether the index covers any items."""
        return self.n_indexed > 0

    def note_positives(self, rows: Sequence[int]) -> None:
        """Remember table rows that were just the positive of an update (scored always)."""
        for row in rows:
            if self.recent:
                self._ring[self._ring_pos] = row
                self._ring_pos = (self._ring_pos + 1) % self.recent

    def maybe_refresh(self, factors: np.ndarray, bias: np.ndarray, now_s: float) -> bool:
        """Rebuild what is due (see the module docstring); True when anything was rebuilt."""
        n = factors.shape[0]
        if n == 0:
            return False
        if not self.built or n >= 2 * self._kmeans_at:
            self._fit(_augment(factors, bias))
            self._refreshed_s = now_s
            return True
        if now_s - self._refreshed_s >= self.refresh_s or n - self.n_indexed > self.max_new:
            self._lloyd_step(_augment(factors, bias))
            self._refreshed_s = now_s
            return True
        return False

    def search(
        self,
        users: np.ndarray,
        factors: np.ndarray,
        bias: np.ndarray,
        n: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate best ``n`` rows and live scores per user; shapes as ``top_n``.

        Rows past a user's distinct candidates are -1 with score ``-inf``.
        """
        if not self.built:
            raise RuntimeError("index not built: call maybe_refresh first")
        users_aug = np.hstack([users, np.ones((users.shape[0], 1), users.dtype)])
        k = min(n, factors.shape[0])
        extra = np.unique(self._extra_rows(factors.shape[0]))
        in_extra = np.zeros(factors.shape[0], bool)
        in_extra[extra] = True
        extra_scores = users @ factors[extra].T + bias[extra]
        widest = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        stage1 = self._stage1(users_aug, self._probes(users_aug), 2 * k + widest)
        out_rows = np.full((users.shape[0], k), -1, np.int64)
        out_scores = np.full((users.shape[0], k), -np.inf, np.float32)
        excluded = np.zeros(factors.shape[0], bool)  # one user's exclusions at a time
        for i, found in enumerate(stage1):
            found = found[~in_extra[found]]  # an item in both groups is scored once
            rows = np.concatenate((found, extra))
            scores = np.concatenate((factors[found] @ users[i] + bias[found], extra_scores[i]))
            if exclude is not None and len(exclude[i]):  # a mask: no sort per user
                skip = np.asarray(exclude[i], np.int64)
                excluded[skip] = True
                scores[excluded[rows]] = -np.inf
                excluded[skip] = False
            best = _best(rows, scores, k)
            out_rows[i, : len(best)] = rows[best]
            out_scores[i, : len(best)] = scores[best]
        return out_rows, out_scores

    # --- building ----------------------------------------------------------------------------
    def _fit(self, aug: np.ndarray) -> None:
        n = aug.shape[0]
        c = self.n_clusters or max(16, round(math.sqrt(n)))
        c = min(c, n)
        rng = np.random.default_rng(self.seed)
        sample = aug if n <= _KMEANS_SAMPLE else aug[rng.choice(n, _KMEANS_SAMPLE, replace=False)]
        centroids = sample[rng.choice(sample.shape[0], c, replace=False)].copy()
        for _ in range(_KMEANS_ITERATIONS):
            centroids = _move(sample, _nearest(sample, centroids), centroids, rng)
        self.centroids = centroids
        self._kmeans_at = n
        self._assign(aug)

    def _lloyd_step(self, aug: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed + self.n_indexed)
        self.centroids = _move(aug, _nearest(aug, self.centroids), self.centroids, rng)
        self._assign(aug)

    def _assign(self, aug: np.ndarray) -> None:
        labels = _nearest(aug, self.centroids)
        self._order = np.argsort(labels, kind="stable")
        self._copy = np.ascontiguousarray(aug[self._order])
        counts = np.bincount(labels, minlength=self.centroids.shape[0])
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        k = min(self.head, aug.shape[0])
        bias = aug[:, -1]
        self._head = np.argpartition(-bias, k - 1)[:k] if k else np.zeros(0, np.int64)
        self.n_indexed = aug.shape[0]

    # --- searching ---------------------------------------------------------------------------
    def _probes(self, users_aug: np.ndarray) -> np.ndarray:
        scores = users_aug @ self.centroids.T
        p = min(self.n_probe, scores.shape[1])
        if p == scores.shape[1]:
            return np.broadcast_to(np.arange(p), scores.shape)
        return np.argpartition(-scores, p - 1, axis=1)[:, :p]

    def _extra_rows(self, n_rows: int) -> np.ndarray:
        ring = self._ring[self._ring >= 0]
        new = np.arange(self.n_indexed, n_rows, dtype=np.int64)
        return np.concatenate((self._head, ring[ring < n_rows], new))

    def _stage1(self, users_aug: np.ndarray, probes: np.ndarray, m: int) -> list[np.ndarray]:
        """Per user, table rows of the best ``m`` items of the probed clusters (copy scores).

        Users are grouped by cluster, so each probed cluster costs one small matrix product
        for all of the batch's users that probe it; scores land in one padded buffer per batch
        and one ``argpartition`` picks every user's best.
        """
        b, p = probes.shape
        sizes = np.diff(self._starts)[probes]  # b x p
        offsets = np.zeros_like(sizes)
        offsets[:, 1:] = np.cumsum(sizes, axis=1)[:, :-1]
        width = int(sizes.sum(axis=1).max())
        scores = np.full((b, width), -np.inf, np.float32)
        positions = np.zeros((b, width), np.int64)
        flat = probes.ravel()
        slot_offsets = offsets.ravel().tolist()
        by_cluster = np.argsort(flat, kind="stable")
        cuts = np.flatnonzero(np.diff(flat[by_cluster])) + 1
        for group in np.split(by_cluster, cuts):
            c = int(flat[group[0]])
            start, stop = int(self._starts[c]), int(self._starts[c + 1])
            if start == stop:
                continue
            users = group // p
            block = self._copy[start:stop] @ users_aug[users].T  # items x users: the fast form
            span = np.arange(start, stop)
            for user, slot, column in zip(users.tolist(), group.tolist(), block.T, strict=True):
                at = slot_offsets[slot]
                scores[user, at : at + stop - start] = column
                positions[user, at : at + stop - start] = span
        m = min(m, width)
        if m < width:
            top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
            scores = np.take_along_axis(scores, top, axis=1)
            positions = np.take_along_axis(positions, top, axis=1)
        return [self._order[pos[sc != -np.inf]] for pos, sc in zip(positions, scores, strict=True)]


def _augment(factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.hstack([factors, bias[:, None]]).astype(np.float32, copy=False)


def _nearest(points: np.ndarray, centroids: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """Index of each point's nearest centroid (squared Euclidean distance)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(points.shape[0], np.int64)
    for start in range(0, points.shape[0], chunk):
        block = points[start : start + chunk] @ centroids.T
        block -= half_norms
        labels[start : start + chunk] = block.argmax(axis=1)
    return labels


def _move(
    points: np.ndarray, labels: np.ndarray, centroids: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Centroids moved to their members' means; an empty cluster restarts at a random point."""
    c = centroids.shape[0]
    counts = np.bincount(labels, minlength=c)
    sums = np.stack(
        [np.bincount(labels, weights=points[:, d], minlength=c) for d in range(points.shape[1])],
        axis=1,
    )
    moved = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        moved[empty] = points[rng.choice(points.shape[0], len(empty), replace=False)]
    return moved


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the best ``k`` finite scores, best first (ties: lower row first)."""
    part = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
    order = part[np.lexsort((rows[part], -scores[part]))]
    return order[scores[order] != -np.inf]
