"""The recommendation API's Prometheus metrics, declared in one place.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (tests build several apps
in one process). Label values are bounded: endpoints are route templates from
:data:`ENDPOINTS` (unknown paths are ``other``), statuses are HTTP status codes, scenes and
strategies come from fixed tuples; never a user or item id. The labelled children are cached
per label combination (bounded by those sets), so a request costs no label lookup. With
several API worker processes, ``prometheus_client``'s multiprocess mode keeps each process's
values in a shared directory (one small memory-mapped file per process and metric type) and
``/metrics`` sums them. Memory and CPU of the API's processes come from
:mod:`serving.process_stats` at scrape time.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from serving.process_stats import ApiProcessCollector
from serving.recommend import SCENES

__all__ = ["ENDPOINTS", "MULTIPROCESS_DIR_ENV", "ApiMetrics", "endpoint_of"]

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before ``prometheus_client`` is imported) in API worker processes: each process writes
its values to files there and :meth:`ApiMetrics.exposition` merges them."""

ENDPOINTS: tuple[str, ...] = (
    "/v1/recommendations",
    "/v1/events",
    "/v1/users/{user_id}",
    "/v1/users/{user_id}/features",
    "/healthz",
    "/metrics",
    "/ui",
    "other",
)
_SUCCESS = {"/v1/events": "202", "/v1/users/{user_id}": "202"}
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def endpoint_of(path: str) -> str:
    """The bounded endpoint label of a request path.

    >>> endpoint_of("/v1/users/alice"), endpoint_of("/v1/recommendations"), endpoint_of("/x")
    ('/v1/users/{user_id}', '/v1/recommendations', 'other')
    >>> endpoint_of("/v1/users/alice/features"), endpoint_of("/"), endpoint_of("/ui/app.js")
    ('/v1/users/{user_id}/features', '/ui', '/ui')
    """
    if path.startswith("/v1/users/"):
        if path.endswith("/features"):
            return "/v1/users/{user_id}/features"
        return "/v1/users/{user_id}"
    if path == "/" or path == "/ui" or path.startswith("/ui/"):
        return "/ui"
    return path if path in ENDPOINTS else "other"


class ApiMetrics:
    """The API's metrics, registered in ``registry`` (a fresh one when ``None``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ns, reg = "flywheel_api", self.registry
        self.request_seconds = Histogram(
            f"{ns}_request_seconds",
            "Request latency by endpoint and HTTP status",
            ["endpoint", "status"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.requests = Counter(
            f"{ns}_requests",
            "Requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=reg,
        )
        self.lists_served = Counter(
            f"{ns}_lists_served",
            "Lists served by scene and strategy",
            ["scene", "strategy"],
            registry=reg,
        )
        self.events_accepted = Counter(
            f"{ns}_events_accepted", "Events accepted by POST /v1/events", registry=reg
        )
        self.events_rejected = Counter(
            f"{ns}_events_rejected",
            "Batches refused by POST /v1/events, by reason",
            ["reason"],
            registry=reg,
        )
        self.impressions_lost = Counter(
            f"{ns}_impressions_lost", "Impression events dropped or not delivered", registry=reg
        )
        if not os.environ.get(MULTIPROCESS_DIR_ENV):  # else added to each merged exposition
            reg.register(ApiProcessCollector())
        self._by_request: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._by_list: dict[tuple[str, str], Any] = {}
        self._preinitialise()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        children = self._by_request.get((endpoint, status))
        if children is None:  # labelled children are looked up once per (endpoint, status)
            labels = (endpoint, str(status))
            children = self.requests.labels(*labels), self.request_seconds.labels(*labels)
            self._by_request[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition: this registry's metrics, or, with several worker processes
        (:data:`MULTIPROCESS_DIR_ENV` set), the sum over all of them."""
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not directory:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        merged.register(ApiProcessCollector(directory))
        return generate_latest(merged)

    def lists_served_counter(self, scene: str, strategy: str) -> Any:
        """The ``lists_served`` child of ``scene`` and ``strategy`` (looked up once)."""
        child = self._by_list.get((scene, strategy))
        if child is None:
            child = self._by_list[(scene, strategy)] = self.lists_served.labels(scene, strategy)
        return child

    def _preinitialise(self) -> None:
        for endpoint in ENDPOINTS[:-1]:
            status = _SUCCESS.get(endpoint, "200")
            self.requests.labels(endpoint, status)
            self.request_seconds.labels(endpoint, status)
        for scene in SCENES:
            for strategy in ("online_mf", "trending", "cooccurrence"):
                self.lists_served.labels(scene, strategy)
