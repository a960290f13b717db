"""Which arm of the configured experiment serves a request: A/B bucket or bandit draw.

Only requests for the experiment's scenes are assigned; others get ``None`` and the scene's
usual strategy. Mode ``ab`` needs nothing but the user's pseudonym
(:func:`online_models.experiments.assign`). Mode ``bandit`` draws the arm by Thompson
sampling from posteriors built from the per-arm counts the job writes to Redis.

State kept (bandit only): one :class:`~online_models.experiments.ThompsonBandit` (two floats
per arm) and its arms' propensities, rebuilt from the counts at most every ``refresh_s``
(1 s by default; computing the propensities takes ~0.4 ms for two arms). A request that finds
them older waits for one ``HGETALL``; concurrent ones meanwhile use the previous posteriors.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from online_models.experiments import (
    ArmCounts,
    Assignment,
    Experiment,
    ThompsonBandit,
    assign,
    counts_by_arm,
)

__all__ = ["ArmChooser", "CountsReader"]

CountsReader = Callable[[str], Awaitable[Mapping[str, ArmCounts]]]
"""Reads an experiment's cumulative counts by arm (e.g. :meth:`RedisStore.arm_counts`)."""


class ArmChooser:
    """Assigns requests to the arms of ``experiment``; ``key`` is the bucketing HMAC key."""

    def __init__(
        self,
        experiment: Experiment,
        key: str,
        read_counts: CountsReader,
        refresh_s: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.experiment = experiment
        self._key = key
        self._read_counts = read_counts
        self._refresh_s = refresh_s
        self._seed = seed
        self._bandit: ThompsonBandit | None = None
        self._propensities = np.ones(len(experiment.arms)) / len(experiment.arms)
        self._fetched_at = -float("inf")
        self._refreshing = False

    async def assign(self, user: str, scene: str) -> Assignment | None:
        """The arm serving ``user`` (a pseudonym) in ``scene``; ``None`` outside the experiment."""
        experiment = self.experiment
        if scene not in experiment.scenes:
            return None
        if experiment.mode == "ab":
            return assign(experiment, user, self._key)
        bandit = await self._current_bandit()
        arm = bandit.choose()
        propensity = float(self._propensities[arm])
        return Assignment(experiment.name, experiment.arms[arm], propensity)

    async def _current_bandit(self) -> ThompsonBandit:
        stale = time.monotonic() - self._fetched_at >= self._refresh_s
        if self._bandit is None or (stale and not self._refreshing):
            self._refreshing = True
            try:
                counts = await self._read_counts(self.experiment.name)
                bandit = ThompsonBandit.from_counts(
                    counts_by_arm(self.experiment, counts), self.experiment.reward, self._seed
                )
                self._propensities = bandit.propensities()
                self._bandit, self._fetched_at = bandit, time.monotonic()
            finally:
                self._refreshing = False
        return self._bandit
