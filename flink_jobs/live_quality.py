"""The job's side of live prequential quality: UserProcessor feeds
:class:`~online_models.live_quality.LiveQuality`, and this exports what it counts to Prometheus.

When: every click, cart add or purchase whose action weight is positive is tested in
``process_element`` after the duplicate check and *before* the event touches the user's
features or the model (test, then train), against the user's list as last written to Redis
(``online_mf``) and the trending list as last written (``popularity``). A user with no
earlier event is the ``cold`` split; otherwise the event is a ``repeat`` when its item is
among the user's remembered items (the last ``recent_items_max`` items and last
``purchased_max`` purchases in the user's state, so an older interaction counts as
first-time), else ``first_time``.

State kept (in memory per subtask, not checkpointed: after a restore every user's list is
unknown until it is rewritten, and those events are counted as not evaluated): the top-K ids
of the ``quality_users_max`` most recently written users (about 0.3 KB each at K = 10), the
trending top-K and the counts since the last export. The coverage windows (items of the
lists written in the last ``quality_coverage_window_s``, at most one entry per item of the
catalogue) are shared by the subtasks of one process, so the gauge covers all their users.

Cost per tested event: one dict lookup, two scans of at most K ids and the membership test
against the user's remembered items; metrics are exported once per list refresh, not per event.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from flink_jobs.user_state import UserState
from flywheel.settings import Settings
from monitoring.metrics import JobMetrics
from online_models.evaluation import DEFAULT_SCORE_ACTIONS, SPLITS
from online_models.features import UserFeatures
from online_models.live_quality import STRATEGIES, CoverageWindow, LiveQuality

__all__ = ["JobQuality", "shared_coverage"]

_lock = threading.Lock()
_coverage: dict[int, dict[str, CoverageWindow]] = {}


def shared_coverage(window_s: int) -> dict[str, CoverageWindow]:
    """The process-wide coverage window of each strategy for a window of ``window_s``."""
    with _lock:
        if window_s not in _coverage:
            _coverage[window_s] = {s: CoverageWindow(window_s) for s in STRATEGIES}
        return _coverage[window_s]


class _Remembered:
    """The items a user's state remembers, as a container (no copy per event)."""

    __slots__ = ("features",)

    def __init__(self, features: UserFeatures) -> None:
        self.features = features

    def __contains__(self, item: object) -> bool:
        return item in self.features.recent or item in self.features.purchased


class JobQuality:
    """Live HR@K / NDCG@K / coverage of one UserProcessor subtask."""

    def __init__(self, settings: Settings, metrics: JobMetrics) -> None:
        self.k = min(settings.quality_k, settings.top_n)  # a list holds top_n items
        self.metrics = metrics
        self.coverage = shared_coverage(settings.quality_coverage_window_s)
        self.live = LiveQuality(self.k, settings.quality_users_max, self.coverage)
        weights = settings.action_weights
        self.actions = frozenset(a for a in DEFAULT_SCORE_ACTIONS if weights.get(a, 0) > 0)
        metrics.init_quality(self.k)
        k = str(self.k)
        self._series = {  # label lookups done once: an export only adds to these children
            (strategy, split): (
                metrics.quality_evaluated.labels(strategy, split),
                metrics.quality_hits.labels(strategy, split, k),
                metrics.quality_ndcg_sum.labels(strategy, split, k),
            )
            for strategy in STRATEGIES
            for split in SPLITS
        }

    def test(self, user: str, item: str, action: str, state: UserState) -> None:
        """Test one accepted event against the lists served so far; ``state`` is the user's
        state before the event."""
        if action in self.actions:
            prior = _Remembered(state.features) if state.n_events else None
            self.live.test(user, item, prior)

    def personal(self, served: dict[str, list[tuple[str, float]]], now_s: float) -> None:
        """The ranked ``(item, score)`` lists just written, by user."""
        k = self.k
        for user, ranked in served.items():
            self.live.personal(user, [item for item, _ in ranked[:k]], now_s)

    def trending(self, ranked: Sequence[tuple[str, float]], now_s: float) -> None:
        """The trending list just written."""
        self.live.trending([item for item, _ in ranked[: self.k]], now_s)

    def forget(self, user: str) -> None:
        """The user was erased."""
        self.live.forget(user)

    def export(self, n_items: int, now_s: float) -> None:
        """Add the counts since the last export to the counters; set the coverage gauges."""
        m = self.metrics
        tallies, unscored = self.live.drain()
        for key, tally in tallies.items():
            if tally.n:
                evaluated, hits, ndcg_sum = self._series[key]
                evaluated.inc(tally.n)
                hits.inc(tally.hits)
                ndcg_sum.inc(tally.dcg)
        for strategy, n in unscored.items():
            if n:
                m.quality_not_evaluated.labels(strategy).inc(n)
        for strategy, window in self.coverage.items():
            distinct = window.distinct(now_s)
            m.quality_coverage.labels(strategy).set(distinct / n_items if n_items else 0.0)
