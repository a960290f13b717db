"""Recommendation strategies compared by the prequential evaluator, behind one small protocol.

A :class:`Strategy` learns from events one at a time and returns top-K lists for a batch of
users. Implementations here: windowed popularity, our online MF
(:class:`~online_models.implicit_mf.ImplicitMF`) and River's ``BiasedMF``/``FunkMF`` used as
they come; item-to-item co-occurrence lives in :mod:`online_models.cooccurrence` and the
scheduled batch ALS in :mod:`online_models.batch_als`.

Every strategy answers a user it cannot rank (unknown, or too few events) with the windowed
popularity list and fills a short list from it, so all lists have K items when the catalogue
allows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from river import optim, reco

from online_models.implicit_mf import DEFAULT_ACTION_WEIGHTS, ImplicitMF
from online_models.popularity import WindowedPopularity
from online_models.topn import top_n

__all__ = [
    "FactorView",
    "OnlineMFStrategy",
    "PopularityStrategy",
    "RiverMFStrategy",
    "Strategy",
    "Trending",
    "fill",
]

DAY_S = 86_400


class Strategy(Protocol):
    """What the evaluator needs: a name, lists for a batch of users, and learning one event."""

    name: str

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """Top-``k`` item ids per user, best first, leaving out ``exclude[i]`` for user i."""
        ...

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """Learn one event (``ts`` in epoch milliseconds)."""
        ...


class FactorView(NamedTuple):
    """What a factor model scores a batch of users with: ``score = vectors @ factors.T + bias``.

    ``warm`` holds the positions (in the batch) of the users the model can rank, ``vectors``
    their rows in that order; ``item_rows`` maps item ids to rows, and an id whose row is
    ``>= len(factors)`` is known to the strategy but not yet to the model.
    """

    warm: list[int]
    vectors: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    item_rows: Mapping[str, int]
    ids: Sequence[str]


def fill(ranked: Sequence[str], fallback: Sequence[str], k: int, skip: set[str]) -> list[str]:
    """``ranked`` then ``fallback``, without duplicates or ``skip``ped items, cut at ``k``.

    >>> fill(["a", "b"], ["b", "c", "d"], 3, {"c"})
    ['a', 'b', 'd']
    """
    out: list[str] = []
    taken = set(skip)
    for source in (ranked, fallback):
        for item in source:
            if item not in taken:
                out.append(item)
                taken.add(item)
                if len(out) == k:
                    return out
    return out


class Trending:
    """A :class:`WindowedPopularity` whose top list is cached until the next event.

    >>> t = Trending(window_s=3600)
    >>> t.add("a", 1.0, 0); t.add("b", 2.0, 0)
    >>> t.top_ids(5)
    ['b', 'a']
    """

    def __init__(self, window_s: int = 7 * DAY_S):
        self.popularity = WindowedPopularity(window_s)
        self._cache: list[str] = []
        self._depth = 0
        self._dirty = True

    def add(self, item: str, weight: float, ts: int) -> None:
        """Count an event."""
        if weight > 0:
            self.popularity.add(item, weight, ts)
            self._dirty = True

    def top_ids(self, n: int) -> list[str]:
        """The ``n`` most popular items in the window, best first."""
        if self._dirty or self._depth < n:
            self._cache = [item for item, _ in self.popularity.top(n)]
            self._depth, self._dirty = n, False
        return self._cache[:n]


def _longest(exclude: list[set[str]] | None) -> int:
    return max((len(e) for e in exclude), default=0) if exclude else 0


class PopularityStrategy:
    """Windowed popularity: every user gets the items with the most weight in the window.

    State: the window's counts (bounded by the items seen within the window).

    >>> pop = PopularityStrategy(window_s=3600)
    >>> pop.learn("u", "a", "click", 0); pop.learn("u", "b", "purchase", 0)
    >>> pop.recommend(["u", "v"], 1, [{"b"}, set()])
    [['a'], ['b']]
    """

    def __init__(
        self,
        window_s: int = 7 * DAY_S,
        action_weights: Mapping[str, float] | None = None,
        name: str = "popularity",
    ):
        self.name = name
        self.weights = dict(action_weights or DEFAULT_ACTION_WEIGHTS)
        self.trending = Trending(window_s)

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """Count the event's action weight for the item."""
        self.trending.add(item, self.weights.get(action, 0.0), ts)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """The same popular list for everyone, minus each user's exclusions."""
        top = self.trending.top_ids(k + _longest(exclude))
        return [fill(top, (), k, exclude[i] if exclude else set()) for i in range(len(users))]


class OnlineMFStrategy:
    """Our :class:`ImplicitMF`, one SGD step per event, exact top-K over the whole item table.

    Users with fewer than ``cold_user_events`` learnt events get the popular list (as the
    job's cold start does). ``rebuy_learn_weight`` multiplies the learning weight of a purchase
    of an item the user purchased before (1: learnt like any purchase), so the model can spend
    its steps on what the user's own items do not already tell. State: the model (item table,
    one vector per user), per-user event counts, the popularity window and, while
    ``rebuy_learn_weight`` is not 1, each user's purchased items (the job reads the same mark
    from the repeat counts in its user state).
    """

    def __init__(
        self,
        window_s: int = 7 * DAY_S,
        cold_user_events: int = 1,
        name: str = "online_mf",
        rebuy_learn_weight: float = 1.0,
        **model_params: Any,
    ):
        if rebuy_learn_weight < 0:
            raise ValueError("rebuy_learn_weight must be >= 0")
        self.name = name
        self.model = ImplicitMF(**model_params)
        self.cold_user_events = cold_user_events
        self.rebuy_learn_weight = rebuy_learn_weight
        self.counts: dict[str, int] = {}
        self.purchased: dict[str, set[str]] = {}
        self.trending = Trending(window_s)

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """One model step (the event's key seeds its negatives) and the popularity count."""
        weight = self.model.weight_of(action)
        if weight <= 0:
            return
        self.trending.add(item, weight, ts)
        if self.rebuy_learn_weight != 1.0 and action == "purchase":
            bought = self.purchased.setdefault(user, set())
            if item in bought:
                weight *= self.rebuy_learn_weight
            bought.add(item)
            if weight <= 0:
                return
        self.model.learn_one(user, item, weight, {"key": f"{user}\x1f{item}\x1f{ts}"})
        self.counts[user] = self.counts.get(user, 0) + 1

    def factor_view(self, users: list[str]) -> FactorView | None:
        """The model's view of the warm users (``None`` when none or no items)."""
        warm = [
            i
            for i, u in enumerate(users)
            if self.counts.get(u, 0) >= max(1, self.cold_user_events) and u in self.model.users
        ]
        table = self.model.items
        if not warm or not len(table):
            return None
        vectors = np.stack([self.model.users[users[i]] for i in warm])
        return FactorView(warm, vectors, table.factors, table.bias, table.index, table.ids)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """One ``top_n`` matrix product for the warm users; popularity for the others."""
        popular = self.trending.top_ids(k + _longest(exclude))
        out = [fill((), popular, k, exclude[i] if exclude else set()) for i in range(len(users))]
        view = self.factor_view(users)
        if view is None:
            return out
        warm, vectors, index, ids = view.warm, view.vectors, view.item_rows, view.ids
        rows_out = None
        if exclude:
            rows_out = [[index[x] for x in exclude[i] if x in index] for i in warm]
        rows, scores = top_n(vectors, view.factors, view.bias, k, rows_out)
        for j, i in enumerate(warm):
            ranked = [ids[r] for r, s in zip(rows[j], scores[j], strict=True) if s > -np.inf]
            out[i] = fill(ranked, popular, k, exclude[i] if exclude else set())
        return out


class RiverMFStrategy:
    """River's ``reco.BiasedMF`` or ``reco.FunkMF`` used as they come: ``learn_one`` with
    ``y`` = the action weight (positives only, as a naive user would).

    Ranking the whole catalogue with ``predict_one`` costs one Python call per item, far too
    slow, so each user's list ranks a candidate set: the ``candidates`` currently most popular
    items plus the user's ``recent`` last items. The candidates are scored with the model's own
    equation (``global mean + user bias + item bias + <v_u, v_i>`` for BiasedMF, ``<v_u, v_i>``
    for FunkMF) read from its parameters in one vector product, which equals ``predict_one``
    without its side effect of creating entries for unknown ids. State: the River model, each
    user's ``recent`` items and the popularity window.
    """

    def __init__(
        self,
        kind: str = "biased",
        n_factors: int = 10,
        candidates: int = 500,
        recent: int = 50,
        window_s: int = 7 * DAY_S,
        action_weights: Mapping[str, float] | None = None,
        seed: int = 42,
        name: str | None = None,
    ):
        if kind not in ("biased", "funk"):
            raise ValueError("kind is 'biased' or 'funk'")
        self.kind = kind
        self.name = name or f"river_{kind}mf"
        # Any: River's reco models are untyped dict-of-array containers
        self.model: Any = _river_model(kind, n_factors, seed)
        self.candidates = candidates
        self.weights = dict(action_weights or DEFAULT_ACTION_WEIGHTS)
        self.recent: dict[str, deque[str]] = {}
        self._recent_max = recent
        self.trending = Trending(window_s)

    def learn(self, user: str, item: str, action: str, ts: int) -> None:
        """``learn_one(user, item, y=weight)`` for actions with a positive weight."""
        weight = self.weights.get(action, 0.0)
        if weight <= 0:
            return
        self.model.learn_one(user, item, weight)
        self.recent.setdefault(user, deque(maxlen=self._recent_max)).append(item)
        self.trending.add(item, weight, ts)

    def scores(self, user: str, items: Sequence[str]) -> np.ndarray:
        """The model's prediction for ``user`` and each of ``items`` (all known to it)."""
        model = self.model
        latents = np.stack([model.i_latents[i] for i in items])
        out = latents @ model.u_latents[user]
        if self.kind == "biased":
            out = out + np.array([model.i_biases[i] for i in items])
            out += model.global_mean.get() + model.u_biases[user]
        return np.asarray(out, dtype=np.float64)

    def recommend(
        self, users: list[str], k: int, exclude: list[set[str]] | None = None
    ) -> list[list[str]]:
        """Rank popular + recent candidates by the model for known users."""
        popular = self.trending.top_ids(max(self.candidates, k + _longest(exclude)))
        known = self.model.u_latents
        out = []
        for i, user in enumerate(users):
            skip = exclude[i] if exclude else set()
            if user not in known:
                out.append(fill((), popular, k, skip))
                continue
            pool = [c for c in dict.fromkeys([*popular, *self.recent[user]]) if c not in skip]
            order = np.argsort(-self.scores(user, pool), kind="stable")[:k]
            out.append(fill([pool[j] for j in order], popular, k, skip))
        return out


def _river_model(kind: str, n_factors: int, seed: int) -> reco.base.Ranker:
    """River's documented example settings for each model."""
    if kind == "biased":
        return reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(0.025),
            latent_optimizer=optim.SGD(0.05),
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            l2_bias=0.0,
            l2_latent=0.0,
        )
    return reco.FunkMF(
        n_factors=n_factors,
        optimizer=optim.SGD(0.05),
        initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
        l2=0.0,
    )
