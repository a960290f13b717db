"""The closed-loop shopper simulator: simulated shoppers use the live API, the API learns.

Each *visit*: a shopper is chosen (a new one with probability ``new_shopper_share`` while the
population lasts, else a known one, uniformly); the shopper's organic browsing is posted
(``POST /v1/events``); the shopper asks for the home list (``GET /v1/recommendations``),
reacts to it (:meth:`~connectors.shoppers.ShopperModel.react`) and the reaction is posted
too. The API logs the list's impressions itself. So every turn of the loop feeds the job,
which rewrites the shopper's list, which the next visit is served.

Each served list is counted in a :class:`~connectors.ctr_timeline.CtrTimeline` under its
*arm* (:func:`arm_of`): the response's ``arm`` when an A/B experiment assigned it, else its
``strategy``. Without an experiment the API picks the strategy from the user's state
(``trending`` for cold users, ``online_mf`` once the job wrote a personal list), so arms and
shopper tenure are confounded: ``trending`` CTR comes from shoppers' first visits,
``online_mf`` CTR from returning ones. Here the shoppers' click model does not depend on
tenure (only on taste, position and the items), which limits the bias, but it is not an
A/B test. With users bucketed 50/50 between arms by the API, ``min_requests`` (count only
shoppers past their first N visits) gives the fair comparison: same shoppers, same tenure.

State: the shoppers met (at most ``config.shoppers``), the timeline, a few counters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from connectors.api_client import ApiClient, ApiError, ServedList
from connectors.ctr_timeline import ArmCounts, CtrTimeline, ctr_ratio
from connectors.shoppers import Shopper, ShopperModel, SimConfig

__all__ = [
    "PERSONAL_ARM",
    "TRENDING_ARM",
    "SimReport",
    "Simulator",
    "Visit",
    "arm_of",
    "events_per_visit",
]

PERSONAL_ARM, TRENDING_ARM = "online_mf", "trending"
_MAX_CONSECUTIVE_ERRORS = 20


def arm_of(served: ServedList) -> str:
    """The arm a served list counts for: the experiment's arm when the API runs one (a user
    in the ``online_mf`` arm without a personal list yet still counts for ``online_mf``),
    else the strategy that served it."""
    return served.arm or served.strategy


def events_per_visit(config: SimConfig) -> float:
    """About how many events one visit puts on the events topic: the organic ones, the
    served list's impression event (one per list, logged by the API) and about one reaction.

    >>> events_per_visit(SimConfig(organic_per_visit=3.0, k=10))
    5.0
    """
    return config.organic_per_visit + 2.0


@dataclass(frozen=True)
class Visit:
    """One visit: when (s since start), who, the shopper's visit number (0 = first), the arm
    served (``""`` when the API failed), what the shopper did, and the events posted."""

    at_s: float
    user_id: str
    number: int
    arm: str
    shown: int
    clicks: int
    carts: int
    purchases: int
    events_sent: int


@dataclass(frozen=True)
class SimReport:
    """A run's outcome; ``ratio`` is CTR(online_mf) / CTR(trending) over the second half."""

    elapsed_s: float
    visits: int
    events_sent: int
    errors: int
    shoppers: int
    totals: dict[str, ArmCounts]
    second_half: dict[str, ArmCounts]
    ratio: float


class Simulator:
    """Drives shoppers against an :class:`~connectors.api_client.ApiClient`.

    ``clock`` (seconds, monotonic) and the seeded generators make a run reproducible against
    a deterministic API; against the live stack, timing makes runs differ.
    """

    def __init__(
        self,
        client: ApiClient,
        config: SimConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.config, self.clock = client, config or SimConfig(), clock
        self.model = ShopperModel(self.config)
        self.timeline = CtrTimeline(self.config.bucket_s)
        self.shoppers: list[Shopper] = []
        self.visits = self.events_sent = self.errors = 0
        self.last_error: ApiError | None = None
        self._rng = np.random.default_rng([self.config.seed, 3])
        self._started = clock()
        self._failing = 0

    @property
    def elapsed_s(self) -> float:
        """Seconds since the simulator was created."""
        return self.clock() - self._started

    def visit(self) -> Visit:
        """One shopper visit (see the module doc). An API error is counted, not raised,
        unless :data:`_MAX_CONSECUTIVE_ERRORS` visits in a row failed."""
        shopper = self._choose()
        number, sent = shopper.visits, 0
        shopper.visits += 1
        self.visits += 1
        try:
            organic = self.model.organic(shopper, self._rng, _now_ms())
            if organic:
                sent += self.client.send(organic)
            served = self.client.recommend(shopper.user_id, "home", self.config.k)
            reaction = self.model.react(shopper, served, self._rng, _now_ms())
            if reaction.events:
                sent += self.client.send(reaction.events)
        except ApiError as exc:
            self._fail(exc)
            self.events_sent += sent
            return Visit(self.elapsed_s, shopper.user_id, number, "", 0, 0, 0, 0, sent)
        self._failing = 0
        self.events_sent += sent
        at_s, arm, shown, r = self.elapsed_s, arm_of(served), len(served.items), reaction
        if number >= self.config.min_requests:
            counts = ArmCounts(1, shown, r.clicks, r.carts, r.purchases, r.relevant)
            self.timeline.record(at_s, arm, counts)
        user = shopper.user_id
        return Visit(at_s, user, number, arm, shown, r.clicks, r.carts, r.purchases, sent)

    def run(
        self,
        duration_s: float | None = None,
        max_visits: int | None = None,
        rate: Callable[[], float] | None = None,
        halt: threading.Event | None = None,
        on_visit: Callable[[Visit], None] | None = None,
    ) -> SimReport:
        """Visit until ``duration_s`` passed, ``max_visits`` were made or ``halt`` is set.

        ``rate()`` is the target visits per second, read before each visit (``None``: as fast
        as the API answers); a run that fell behind catches up by at most one second's worth.
        """
        halt = halt or threading.Event()
        start = next_at = self.clock()
        done = 0
        while not halt.is_set():
            if duration_s is not None and self.clock() - start >= duration_s:
                break
            if max_visits is not None and done >= max_visits:
                break
            per_s = rate() if rate is not None else 0.0
            if per_s > 0:
                wait = next_at - self.clock()
                if wait > 0 and halt.wait(wait):
                    break
                next_at = max(next_at + 1.0 / per_s, self.clock() - 1.0)
            visit = self.visit()
            done += 1
            if on_visit is not None:
                on_visit(visit)
        return self.report()

    def report(self) -> SimReport:
        """The run so far; the second half starts at half the elapsed time."""
        elapsed = self.elapsed_s
        half = self.timeline.totals(since_s=_half_start(elapsed, self.timeline.bucket_s))
        return SimReport(
            elapsed_s=elapsed,
            visits=self.visits,
            events_sent=self.events_sent,
            errors=self.errors,
            shoppers=len(self.shoppers),
            totals=self.timeline.totals(),
            second_half=half,
            ratio=ctr_ratio(half, PERSONAL_ARM, TRENDING_ARM),
        )

    def _choose(self) -> Shopper:
        c = self.config
        room = len(self.shoppers) < c.shoppers
        if room and (not self.shoppers or self._rng.random() < c.new_shopper_share):
            self.shoppers.append(self.model.shopper(len(self.shoppers)))
            return self.shoppers[-1]
        return self.shoppers[int(self._rng.integers(len(self.shoppers)))]

    def _fail(self, exc: ApiError) -> None:
        self.errors += 1
        self._failing += 1
        self.last_error = exc
        if self._failing >= _MAX_CONSECUTIVE_ERRORS:
            raise ApiError(exc.status, f"{self._failing} visits in a row failed; last: {exc}")


def _half_start(elapsed_s: float, bucket_s: float) -> float:
    """Start of the second half, on a bucket boundary (so no bucket is split).

    >>> _half_start(100.0, 10.0), _half_start(95.0, 10.0)
    (50.0, 40.0)
    """
    return math.floor(elapsed_s / 2 / bucket_s) * bucket_s


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
