"""A batch model retrained on a schedule: the ``implicit`` library's ALS, as a baseline.

Every ``retrain_every_s`` of stream time (boundaries aligned to the epoch, e.g. every hour
on the hour) the model is retrained from scratch on all events seen before the boundary;
lists in between come from the last trained model. New users and items since the last
training are unknown to it: a user it does not know gets the windowed popular list.

The simulation is kind to the batch model: a training is available at its boundary at once
(its run time is not charged to stream time), it is skipped only when no event arrived since
the last one (the result would be the same), and training happens lazily, when lists are next
asked for, on exactly the events before the latest boundary. Training time is measured
(``train_seconds``, ``trainings``).

The interaction matrix holds ``alpha * sum of action weights`` per (user, item) as ALS
confidence. State: every learnt event (three arrays growing with the stream), the id maps and
the last model's factors: memory grows with the stream, as a batch system's event log does.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from online_models.implicit_mf import DEFAULT_ACTION_WEIGHTS
from online_models.strategies import DAY_S, FactorView, Trending, fill
from online_models.topn import top_n

__all__ = ["BatchALSStrategy"]


class BatchALSStrategy:
    """``implicit`` ALS retrained from scratch every ``retrain_every_s`` of stream time.

    >>> als = BatchALSStrategy(retrain_every_s=3600, factors=4, iterations=2)
    >>> for hour, (user, item) in enumerate([("a", "x"), ("b", "y"), ("a", "y")]):
    ...     als.learn(user, item, "purchase", hour * 3_600_000)
    >>> len(als.recommend(["a"], 2)[0]), als.trainings
    (2, 1)
    """

    def __init__(
        self,
        retrain_every_s: int = DAY_S,
        factors: int = 32,
        iterations: int = 4,
        regularization: float = 0.05,
        alpha: float = 1.0,
        window_s: int = 7 * DAY_S,
        action_weights: Mapping[str, float] | None = None,
        threads: int = 1,
        seed: int = 42,
        name: str = "batch_als",
    ):
        self.name = name
        self.retrain_every_ms = retrain_every_s * 1000
        self.params = {
            "factors": factors,
            "iterations": iterations,
            "regularization": regularization,
        }
        self.alpha, self.threads, self.seed = alpha, threads, seed
        self.weights = dict(action_weights or DEFAULT_ACTION_WEIGHTS)
        self.trending = Trending(window_s)
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.item_ids: list[str] = []
        self._rows, self._cols = array("i"), array("i")
        self._vals, self._ts = array("f"), array("q")
        self._trained_events = 0
        self._trained_boundary = -1
        self._user_factors = np.zeros((0, factors), dtype=np.float32)
        self._item_factors = np.zeros((0, factors), dtype=np.float32)
        self.trainings = 0
        self.train_seconds = 0.0

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """Append the event to the log (and count it for popularity)."""
        weight = self.weights.get(action, 0.0)
        if weight <= 0:
            return
        self.trending.add(item, weight, ts)
        self._rows.append(self.user_index.setdefault(user, len(self.user_index)))
        col = self.item_index.get(item)
        if col is None:
            col = self.item_index[item] = len(self.item_ids)
            self.item_ids.append(item)
        self._cols.append(col)
        self._vals.append(weight)
        self._ts.append(ts)

    def _maybe_train(self) -> None:
        """Retrain on the events before the latest boundary, unless that model exists."""
        if not self._ts:
            return
        now = self._ts[-1]
        boundary = now - now % self.retrain_every_ms
        if boundary <= self._trained_boundary:
            return
        self._trained_boundary = boundary
        n_events = bisect.bisect_left(self._ts, boundary)
        if n_events == self._trained_events:
            return
        self._train(n_events)

    def _train(self, n_events: int) -> None:
        """Fit ALS from scratch on the first ``n_events`` events."""
        start = time.perf_counter()
        rows = np.frombuffer(self._rows, dtype=np.int32)[:n_events]
        cols = np.frombuffer(self._cols, dtype=np.int32)[:n_events]
        vals = np.frombuffer(self._vals, dtype=np.float32)[:n_events] * np.float32(self.alpha)
        shape = (int(rows.max()) + 1, int(cols.max()) + 1)
        matrix = sp.csr_matrix((vals, (rows, cols)), shape=shape, dtype=np.float32)
        matrix.sum_duplicates()
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                **self.params,
                random_state=self.seed,
                num_threads=self.threads,
                calculate_training_loss=False,
            )
            model.fit(matrix, show_progress=False)
        self._user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self._item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._trained_events = n_events
        self.trainings += 1
        self.train_seconds += time.perf_counter() - start

    def factor_view(self, users: list[str]) -> FactorView | None:
        """The last trained model's view of the users it knows (item bias 0); items added
        since its training have rows past its factor matrix."""
        self._maybe_train()
        n_users, n_items = self._user_factors.shape[0], self._item_factors.shape[0]
        known = [i for i, u in enumerate(users) if self.user_index.get(u, n_users) < n_users]
        if not known or not n_items:
            return None
        vectors = self._user_factors[[self.user_index[users[i]] for i in known]]
        bias = np.zeros(n_items, np.float32)
        return FactorView(known, vectors, self._item_factors, bias, self.item_index, self.item_ids)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """Lists from the last trained model; popularity for users it does not know."""
        self._maybe_train()
        longest = max((len(e) for e in exclude), default=0) if exclude else 0
        popular = self.trending.top_ids(k + longest)
        out = [fill((), popular, k, exclude[i] if exclude else set()) for i in range(len(users))]
        n_users, n_items = self._user_factors.shape[0], self._item_factors.shape[0]
        known = [i for i, u in enumerate(users) if self.user_index.get(u, n_users) < n_users]
        if not known or not n_items:
            return out
        vectors = self._user_factors[[self.user_index[users[i]] for i in known]]
        rows_out = None
        if exclude:
            index = self.item_index
            rows_out = [
                [index[x] for x in exclude[i] if index.get(x, n_items) < n_items] for i in known
            ]
        rows, scores = top_n(
            vectors, self._item_factors, np.zeros(n_items, np.float32), k, rows_out
        )
        for j, i in enumerate(known):
            ranked = [
                self.item_ids[r] for r, s in zip(rows[j], scores[j], strict=True) if s > -np.inf
            ]
            out[i] = fill(ranked, popular, k, exclude[i] if exclude else set())
        return out
