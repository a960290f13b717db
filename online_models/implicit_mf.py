"""Online implicit-feedback matrix factorisation, a River ``reco`` Ranker.

Each positive interaction (user, item, weight) takes one SGD step on a weighted logistic loss
over the item and ``n_negatives`` sampled negatives::

    score(u, i) = <p_u, q_i> + b_i
    loss        = w * -log(sigmoid(score(u, i))) + sum_j -log(1 - sigmoid(score(u, j)))

The step uses the factors as they are before it (all gradients first, then all updates), so it
is the same whether it runs here or inside a Flink operator; its arithmetic is one compiled
call (:func:`~online_models.mf_kernel.sgd_step`) and the user vector moves through the River
optimiser. Negatives are drawn uniformly from
the items known at that moment by a generator seeded with the event's key, so a replay of the
same stream gives bit-identical factors.

State kept: the :class:`~online_models.item_table.ItemTable` (bounded by ``max_items``) and,
when used standalone through ``learn_one``, one float32 vector per user in ``users`` (and, with
``user_step_events`` on, one event count per user in ``user_events``); the
Flink job keeps user vectors in its own keyed state instead and calls :meth:`ImplicitMF.update`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from river import optim
from river.reco.base import Ranker

from online_models.initializers import KeyedNormal
from online_models.item_table import ItemTable
from online_models.mf_kernel import sgd_step, splitmix_rows

__all__ = ["DEFAULT_ACTION_WEIGHTS", "ImplicitMF", "ItemDeltas"]

DEFAULT_ACTION_WEIGHTS = {"view": 0.5, "click": 1.0, "add_to_cart": 2.0, "purchase": 4.0}


@dataclass(frozen=True, slots=True)
class ItemDeltas:
    """What one update added to the item table: ids, factor deltas (m x k), bias deltas (m,)."""

    items: list[str]
    factors: np.ndarray
    bias: np.ndarray


def stable_seed(key: str, seed: int) -> int:
    """A 32-bit seed derived from ``key`` and ``seed``, equal in every process.

    >>> stable_seed("sku-1", 42) == stable_seed("sku-1", 42)
    True
    """
    digest = hashlib.blake2b(
        key.encode(), digest_size=8, salt=seed.to_bytes(8, "little", signed=True)
    )
    return int.from_bytes(digest.digest()[:4], "little")


class ImplicitMF(Ranker):
    """Weighted logistic matrix factorisation with sampled negatives, learnt one event at a time.

    Parameters
    ----------
    n_factors
        Length of user and item vectors.
    learning_rate
        Step size of River's :class:`~river.optim.SGD` (ignored when ``optimizer`` is given).
    optimizer
        A River SGD optimiser (may carry a learning-rate schedule); default SGD(learning_rate).
    l2
        L2 penalty on the factors touched by a step.
    n_negatives
        Negatives sampled per positive.
    action_weights
        Weight of a positive per action; ``None`` = :data:`DEFAULT_ACTION_WEIGHTS`.
    init_std
        Standard deviation of the initial factors.
    seed
        Seed of initialisation and negative sampling.
    max_items
        Capacity of the item table.
    user_step_events
        When > 0, the user's step shrinks with the user's history: its learning rate is
        ``lr / sqrt(1 + n / user_step_events)``, ``n`` the user's earlier learnt events (the
        caller passes it to :meth:`update`; ``learn_one`` counts them). The vector then
        settles on the user's whole history instead of following the last events, as a
        closed-form (ALS) fit does. 0 (default): the same rate for every event.

    Examples
    --------
    >>> model = ImplicitMF(n_factors=8, seed=1)
    >>> for _ in range(30):
    ...     model.learn_one("ann", "tea", x={"action": "purchase", "key": "k"})
    ...     model.learn_one("bob", "coffee", x={"action": "purchase", "key": "k"})
    >>> model.predict_one("ann", "tea") > model.predict_one("ann", "coffee")
    True
    """

    def __init__(
        self,
        n_factors: int = 32,
        learning_rate: float = 0.05,
        optimizer: optim.SGD | None = None,
        l2: float = 0.002,
        n_negatives: int = 4,
        action_weights: dict[str, float] | None = None,
        init_std: float = 0.1,
        seed: int = 42,
        max_items: int = 2_000_000,
        user_step_events: float = 0.0,
    ):
        super().__init__(seed=seed)
        self._seed = seed
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.l2 = l2
        self.n_negatives = n_negatives
        self.action_weights = action_weights
        self.init_std = init_std
        self.max_items = max_items
        if user_step_events < 0:
            raise ValueError("user_step_events must be >= 0")
        self.user_step_events = user_step_events
        self._optimizer = optim.SGD(learning_rate) if optimizer is None else optimizer
        self._weights = dict(DEFAULT_ACTION_WEIGHTS if action_weights is None else action_weights)
        self.items = ItemTable(n_factors, init_std, seed, max_items)
        self._user_init = KeyedNormal(sigma=init_std, seed=seed + 1)
        self.users: dict[str, np.ndarray] = {}
        self.user_events: dict[str, int] = {}
        """Learnt events per user of ``learn_one`` (kept only while ``user_step_events`` > 0)."""

    # --- River Ranker API ------------------------------------------------------------------
    def learn_one(self, user, item, y=None, x=None) -> None:
        """Learn one interaction: ``x["action"]`` picks the weight, or ``y`` gives it directly.

        ``x["key"]`` (e.g. the event id) seeds the negative sampler; it defaults to user+item.
        """
        x = x or {}
        weight = float(y) if y is not None else self.weight_of(x.get("action", "click"))
        if weight <= 0:
            return
        vector = self.users.get(user)
        if vector is None:
            vector = self.users[user] = self.new_user_vector(str(user))
        seen = 0
        if self.user_step_events > 0:
            seen = self.user_events.get(user, 0)
            self.user_events[user] = seen + 1
        key = str(x.get("key", f"{user}\x1f{item}"))
        self.update(vector, str(item), weight, key, user_events=seen)

    def predict_one(self, user, item, x=None):
        """Score of ``item`` for ``user``; 0 when either is unknown."""
        vector = self.users.get(user)
        row = self.items.index.get(str(item))
        if vector is None or row is None:
            return 0.0
        return float(self.items.factors[row] @ vector + self.items.bias[row])

    # --- the functional core shared with the Flink operator --------------------------------
    def weight_of(self, action: str) -> float:
        """Positive weight of an action (0 for actions that are not learnt, e.g. impressions)."""
        return self._weights.get(action, 0.0)

    def new_user_vector(self, user: str) -> np.ndarray:
        """Deterministic initial factors of a new user (a keyed River initialiser)."""
        return self._user_init.draw(user, self.n_factors)

    def update(
        self, user_vector: np.ndarray, item: str, weight: float, key: str, user_events: int = 0
    ) -> ItemDeltas:
        """One SGD step for a positive; mutates ``user_vector`` and the item table.

        ``user_events`` (the user's earlier learnt events) scales the user's step when
        ``user_step_events`` > 0 (class docstring); it is ignored otherwise.

        Returns the item-side deltas (positive first, then negatives) so that replicas of the
        item table elsewhere can apply exactly the same change.
        """
        table = self.items
        pos = table.ensure(item)
        rows = self._rows(pos, key)
        m, k = len(rows), self.n_factors
        d_q = np.empty((m, k), np.float32)
        d_b = np.empty(m, np.float32)
        grad_u = np.empty(k, np.float32)
        lr, l2 = self._optimizer.learning_rate, self.l2
        sgd_step(table.factors, table.bias, rows, user_vector, weight, lr, l2, d_q, d_b, grad_u)
        if self.user_step_events > 0:
            grad_u *= np.float32(self.user_step_scale(user_events))
        self._optimizer.step(w=user_vector, g=grad_u)
        ids = table.ids
        return ItemDeltas([ids[r] for r in rows.tolist()], d_q, d_b)

    def user_step_scale(self, user_events: int) -> float:
        """Factor of the user's learning rate after ``user_events`` learnt events (1 when
        ``user_step_events`` is 0).

        >>> ImplicitMF(user_step_events=10).user_step_scale(30)
        0.5
        """
        if self.user_step_events <= 0:
            return 1.0
        return float(1.0 / np.sqrt(1.0 + user_events / self.user_step_events))

    def _rows(self, positive: int, key: str) -> np.ndarray:
        """``positive`` followed by distinct other rows drawn by a SplitMix64 stream seeded
        by ``key``."""
        wanted = min(self.n_negatives, len(self.items) - 1)
        rows = np.empty(1 + max(wanted, 0), np.int64)
        rows[0] = positive
        if wanted > 0:
            state = stable_seed(key, self._seed) | (self._seed & 0xFFFFFFFF) << 32
            splitmix_rows(np.uint64(state), positive, len(self.items), rows[1:])
        return rows
