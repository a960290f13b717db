"""Flywheel's own Prometheus metrics, declared in one place.

The Flink job's Python functions record into :class:`JobMetrics`; :func:`serve` exposes the
registry over HTTP once per process (all subtasks of a local mini-cluster share one Python
interpreter in thread mode, and so one registry). Label values are bounded: actions, outcomes
and dead-letter reasons come from fixed tuples and are pre-initialised, never ids.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from flywheel.events import REJECT_REASONS
from flywheel.settings import ACTIONS

__all__ = ["OUTCOMES", "JobMetrics", "job_metrics", "serve"]

OUTCOMES = ("accepted", "duplicate", "dead_letter")
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
        self._initialise()

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
_metrics: JobMetrics | None = None
_served_port: int | None = None


def job_metrics() -> JobMetrics:
    """The process-wide job metrics (created on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = JobMetrics(_registry)
        return _metrics


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose the process-wide registry on ``addr:port`` (once per process; 0 = do not serve)."""
    global _served_port
    with _lock:
        if port == 0 or _served_port is not None:
            return
        start_http_server(port, addr=addr, registry=_registry)
        _served_port = port
