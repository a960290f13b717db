"""Flywheel's own Prometheus metrics, declared in one place.

The Flink job's Python functions record into :class:`JobMetrics`; :func:`serve` exposes the
registry over HTTP once per process (all subtasks of a local mini-cluster share one Python
interpreter in thread mode, and so one registry). Label values are bounded: actions, outcomes
and dead-letter reasons come from fixed tuples and are pre-initialised, never ids; the per-arm
counters are labelled with the configured experiment's name and arms only (the job ignores
impressions naming any other), pre-initialised by :meth:`JobMetrics.init_experiment`; the live
quality series are labelled with fixed strategies and splits and the configured K, created by
:meth:`JobMetrics.init_quality`. The registry also carries ``prometheus_client``'s process
collector (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...) of the process
that runs the Python operators: the dashboard's worker-memory panel and the sizing guide read it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from flywheel.events import REJECT_REASONS
from flywheel.settings import ACTIONS
from online_models.evaluation import SPLITS
from online_models.live_quality import STRATEGIES as QUALITY_STRATEGIES

__all__ = ["CONVERSIONS", "OUTCOMES", "JobMetrics", "job_metrics", "release", "serve"]

OUTCOMES = ("accepted", "duplicate", "dead_letter")
CONVERSIONS = ("add_to_cart", "purchase")
"""The ``action`` label values of ``flywheel_job_arm_conversions_total``."""
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)


class JobMetrics:
    """The streaming job's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry):
        ns = "flywheel_job"
        self.events = Counter(
            f"{ns}_events", "Events by action and outcome", ["action", "outcome"], registry=registry
        )
        self.dead_letters = Counter(
            f"{ns}_dead_letters", "Dead-lettered events by reason", ["reason"], registry=registry
        )
        self.late_events = Counter(
            f"{ns}_late_events", "Accepted events too late for the windows", registry=registry
        )
        self.model_updates = Counter(
            f"{ns}_model_updates", "Online MF update steps", registry=registry
        )
        self.freshness = Histogram(
            f"{ns}_freshness_seconds",
            "Time from an event entering Kafka to its user's list written to Redis",
            buckets=_FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.topn_batch_users = Histogram(
            f"{ns}_topn_batch_users",
            "Users per top-N refresh batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=registry,
        )
        self.topn_batch_seconds = Histogram(
            f"{ns}_topn_batch_seconds",
            "Duration of one top-N refresh batch (scoring + Redis write)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.lists_written = Counter(
            f"{ns}_lists_written",
            "Lists written to Redis by strategy",
            ["strategy"],
            registry=registry,
        )
        self.item_sync_batches = Counter(
            f"{ns}_item_sync_batches",
            "Item-delta batches sent or received",
            ["direction"],
            registry=registry,
        )
        self.items = Gauge(f"{ns}_items", "Items in the model's item table", registry=registry)
        self.items_refused = Counter(
            f"{ns}_items_refused",
            "Learning steps skipped because the item table is full (FLYWHEEL_MAX_ITEMS)",
            registry=registry,
        )
        self.neighbour_updates = Counter(
            f"{ns}_neighbour_updates",
            "Events applied to their item's neighbour counts (item-to-item lists)",
            registry=registry,
        )
        self.neighbour_lists_written = Counter(
            f"{ns}_neighbour_lists_written",
            "Item neighbour lists (product scene) written to Redis",
            registry=registry,
        )
        self.neighbour_batch_items = Histogram(
            f"{ns}_neighbour_batch_items",
            "Item neighbour lists per Redis write batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=registry,
        )
        self.arm_impressions = Counter(
            f"{ns}_arm_impressions",
            "Impressions served by an experiment's arm",
            ["experiment", "arm"],
            registry=registry,
        )
        self.arm_clicks = Counter(
            f"{ns}_arm_clicks",
            "Clicks attributed to an arm's impressions (at most one per impression)",
            ["experiment", "arm"],
            registry=registry,
        )
        self.arm_conversions = Counter(
            f"{ns}_arm_conversions",
            "Cart adds and purchases attributed to an arm's impressions (one each per impression)",
            ["experiment", "arm", "action"],
            registry=registry,
        )
        self._quality(registry)
        self._initialise()

    def _quality(self, registry: CollectorRegistry) -> None:
        """Live prequential quality per strategy (:mod:`online_models.live_quality`): rolling
        HR@K = rate(hits) / rate(evaluated), NDCG@K = rate(ndcg_sum) / rate(evaluated)."""
        ns = "flywheel_job_quality"
        self.quality_evaluated = Counter(
            f"{ns}_evaluated",
            "Events tested against the list the strategy served the user (before learning)",
            ["strategy", "split"],
            registry=registry,
        )
        self.quality_hits = Counter(
            f"{ns}_hits",
            "Tested events whose item was in the strategy's top-K list",
            ["strategy", "split", "k"],
            registry=registry,
        )
        self.quality_ndcg_sum = Counter(
            f"{ns}_ndcg_sum",
            "Sum of NDCG@K (1/log2(rank+1) for a hit, 0 otherwise) over the tested events",
            ["strategy", "split", "k"],
            registry=registry,
        )
        self.quality_not_evaluated = Counter(
            f"{ns}_not_evaluated",
            "Events with no known list of the strategy to test (restore, eviction, empty list)",
            ["strategy"],
            registry=registry,
        )
        self.quality_coverage = Gauge(
            f"{ns}_coverage_ratio",
            "Distinct items in the top-K lists written in the trailing window / items in the table",
            ["strategy"],
            registry=registry,
        )

    def init_quality(self, k: int) -> None:
        """Create the quality series for top-``k`` lists at zero, so they exist before traffic."""
        for strategy in QUALITY_STRATEGIES:
            self.quality_not_evaluated.labels(strategy)
            self.quality_coverage.labels(strategy)
            for split in SPLITS:
                self.quality_evaluated.labels(strategy, split)
                self.quality_hits.labels(strategy, split, str(k))
                self.quality_ndcg_sum.labels(strategy, split, str(k))

    def init_experiment(self, experiment: str, arms: tuple[str, ...]) -> None:
        """Create the per-arm series of ``experiment`` at zero, so they exist before traffic."""
        for arm in arms:
            self.arm_impressions.labels(experiment, arm)
            self.arm_clicks.labels(experiment, arm)
            for action in CONVERSIONS:
                self.arm_conversions.labels(experiment, arm, action)

    def _initialise(self) -> None:
        for action in ACTIONS:
            for outcome in OUTCOMES:
                self.events.labels(action, outcome)
        self.events.labels("unknown", "dead_letter")
        for reason in REJECT_REASONS:
            self.dead_letters.labels(reason)
        for strategy in ("online_mf", "trending"):
            self.lists_written.labels(strategy)
        for direction in ("sent", "received"):
            self.item_sync_batches.labels(direction)


disable_created_metrics()
_lock = threading.Lock()
_registry = CollectorRegistry()
# process_resident_memory_bytes, process_cpu_seconds_total, ... of the process running the
# Python operators: in thread mode the TaskManager JVM that embeds the interpreter, in process
# mode the Python worker (Linux only: read from /proc; elsewhere the collector yields nothing)
ProcessCollector(registry=_registry)
_metrics: JobMetrics | None = None
_server: Any = None
_users = 0
_log = logging.getLogger(__name__)


def job_metrics() -> JobMetrics:
    """The process-wide job metrics (created on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = JobMetrics(_registry)
        return _metrics


def serve(port: int, addr: str = "127.0.0.1", span: int = 1) -> None:
    """Expose the process-wide registry on ``addr`` at the first free port of
    ``port .. port + span - 1`` while any operator uses it.

    Every operator calls this in ``open()`` and :func:`release` in ``close()``; the HTTP
    server runs while at least one is open, so a restarted job (new operators, maybe a new
    interpreter in the same JVM) can bind a port again. ``span`` > 1 lets several job
    processes on one host (TaskManagers of a standalone cluster) each take a port of the
    range. When no port of it can be bound, that is logged, not raised: metrics must not take
    the pipeline down (``up == 0`` alerts on it).
    """
    global _server, _users
    with _lock:
        _users += 1
        if port == 0 or _server is not None:
            return
        last = port + max(1, span) - 1
        for candidate in range(port, last + 1):
            try:
                _server, _ = start_http_server(candidate, addr=addr, registry=_registry)
                return
            except OSError as exc:
                error = exc
        where = f"{addr}:{port}" if last == port else f"{addr}:{port}-{last}"
        _log.error("cannot serve metrics on %s: %s", where, error)


def release() -> None:
    """Counterpart of :func:`serve`: the last user stops the HTTP server."""
    global _server, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _server is not None:
            _server.shutdown()
            _server.server_close()
            _server = None
