"""The recommendation API: an app factory over Redis (lists) and Kafka (events).

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /v1/recommendations?user_id=&scene=home|cart|product&item_id=&k=10&diversity=``:
  the list to show (rules in :mod:`serving.recommend`); every served list is logged as one
  ``impression`` event carrying its items in order (``item_ids``) to the events topic
  (fire-and-forget, losses counted). When ``FLYWHEEL_EXPERIMENT`` runs on the scene, an arm is
  chosen per request (:mod:`serving.assignment`), serves its strategy, and is named in the
  response and on the impression (``experiment``, ``arm``, ``propensity``). Served by
  :mod:`serving.recommendations`: plainly valid requests by its ASGI fast path, the others
  by the FastAPI route, which validates and documents the parameters.
- ``POST /v1/events``: one event or an array of at most 1000, validated with the job's rules
  (:func:`serving.ingest.parse_batch`); all are produced, or none (400/422 naming the event
  index and field). 202 once the broker acknowledged them.
- ``GET /v1/users/{user_id}/features``: the user's windowed features as the job wrote them
  (404 naming the user when there are none).
- ``DELETE /v1/users/{user_id}``: produces a ``forget`` tombstone (the job then clears the
  user's Flink state) and deletes the user's Redis keys at once. 202.
- ``GET /healthz``: Redis, Kafka and job checks; 503 when Redis or Kafka is down.
- ``GET /metrics``: the API's Prometheus metrics (:mod:`serving.metrics`).
- ``GET /`` and ``/ui/``: a small web page over these endpoints (:mod:`serving.web`).

Bad input is a 4xx naming the field, never a 5xx; an unreachable Redis or Kafka is a 503.
Clients (a Redis pool, a Kafka producer created on first use) are opened and closed by the
app's lifespan; one app serves one event loop. :func:`serve` runs ``FLYWHEEL_API_WORKERS``
uvicorn worker processes (each its own app and clients; their metrics are merged through
``prometheus_client``'s multiprocess mode).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.events import MAX_ID_CHARS, pseudonymise
from flywheel.settings import Settings, load_settings
from serving.health import REQUIRED, check_all
from serving.ingest import MAX_BATCH, BadBatch, forget_record, parse_batch
from serving.kafka_sink import KafkaSink, SinkError
from serving.metrics import MULTIPROCESS_DIR_ENV, ApiMetrics, endpoint_of
from serving.recommendations import (
    MAX_K,
    PATH,
    FastRecommendations,
    ListServer,
    Recommendations,
    RecQuery,
    Scene,
    unavailable_detail,
)
from serving.store import RedisStore
from serving.web import add_web_page

__all__ = ["MAX_K", "app_from_environment", "create_app", "serve"]

log = logging.getLogger(__name__)
UserId = Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, description="raw user id")]
_EVENTS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "description": "one event (see the README's event schema) or an array",
                    "oneOf": [
                        {"type": "object"},
                        {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
                    ],
                },
                "example": {
                    "event_id": "e-1",
                    "user_id": "alice",
                    "item_id": "sku-7",
                    "action": "click",
                    "ts": 1700000000000,
                },
            }
        },
    }
}


class Accepted(BaseModel):
    """Events produced to the events topic."""

    accepted: int


class UserFeatures(BaseModel):
    """A user's windowed features (the job's ``{prefix}:features:{user}`` value)."""

    user_id: str
    features: dict[str, Any] = Field(
        description="n_events, max_ts, late, windows (counts by action per window), totals, "
        "categories, recent (newest last), purchased, factors"
    )


class Forgotten(BaseModel):
    """The tombstone produced and the Redis keys deleted."""

    user_id: str
    event_id: str
    deleted_keys: int


@dataclass
class _Clients:
    """The clients the lifespan opens; ``None`` outside it."""

    store: RedisStore | None = None
    sink: KafkaSink | None = None

    def get(self) -> tuple[RedisStore, KafkaSink]:
        if self.store is None or self.sink is None:
            raise RuntimeError("the app's lifespan has not started")
        return self.store, self.sink


def create_app(
    settings: Settings,
    metrics: ApiMetrics | None = None,
    *,
    fast_path: bool = True,
    freeze_heap: bool = False,
) -> FastAPI:
    """The API bound to ``settings``; ``metrics`` default to a fresh registry.

    ``fast_path=False`` serves every ``GET /v1/recommendations`` through the FastAPI route
    (the reference behaviour the fast path is tested against). ``freeze_heap`` (for a
    process that runs only this app, as :func:`serve`'s) moves every object alive once the app
    has started out of the garbage collector's reach (``gc.freeze``): the modules, routes and
    clients are never garbage, and a full collection then scans only what requests allocate
    (about 90k objects and tens of milliseconds otherwise, a pause every request in flight
    waits for).
    """
    metrics = metrics or ApiMetrics()
    clients = _Clients()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        clients.store = RedisStore(settings)
        clients.sink = KafkaSink(settings, on_dropped=metrics.impressions_lost.inc)
        if freeze_heap:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            store, sink = clients.get()
            clients.store = clients.sink = None
            await store.close()
            await asyncio.to_thread(sink.close)

    app = FastAPI(
        title="Flywheel recommendation API",
        version="1",
        description="Personal and trending lists from Redis; events and erasure to Kafka.",
        lifespan=lifespan,
    )
    server = ListServer(settings, clients.get, metrics)
    if fast_path:  # inside the timing middleware, which is added last (outermost)
        app.add_middleware(FastRecommendations, server=server)
    app.add_middleware(_Timing, metrics=metrics)
    app.add_exception_handler(RedisError, _unavailable("Redis"))
    app.add_exception_handler(SinkError, _unavailable("Kafka"))
    _add_recommendations(app, server)
    _add_events(app, settings, clients, metrics)
    _add_features(app, settings, clients)
    _add_operations(app, settings, clients, metrics)
    add_web_page(app)
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process: settings from the ``FLYWHEEL_*`` environment, which
    :func:`serve` exports before it starts the workers."""
    return create_app(load_settings(), freeze_heap=True)


def serve(settings: Settings) -> None:
    """Run the API with uvicorn on ``settings.api_host:settings.api_port`` until stopped.

    ``settings.api_workers`` processes accept on the same socket. Uvicorn runs on uvloop with
    the httptools parser (both pinned dependencies); its access log is off (request lines
    would put raw user ids in the logs; ``/metrics`` counts requests by endpoint and status
    instead), and so are proxy-header rewriting and the ``server`` header, which this API
    does not need.
    """
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,  # its lines carry raw user ids (query strings, /v1/users/{id})
        "proxy_headers": False,
        "server_header": False,
    }
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings, freeze_heap=True), **options)
        return
    _export(settings)
    target = f"{__name__}:{app_from_environment.__name__}"
    uvicorn.run(target, factory=True, workers=settings.api_workers, **options)


def _export(settings: Settings) -> None:
    """Hand ``settings`` to the worker processes (environment variables) and give them an
    empty directory for the shared metrics (``<var_dir>/api-metrics``)."""
    from deploy.job_process import settings_env

    os.environ.update(settings_env(settings))
    metrics_dir = settings.var_dir / "api-metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir.resolve())


def _add_recommendations(app: FastAPI, server: ListServer) -> None:
    @app.get(
        PATH,
        response_model=Recommendations,
        responses={503: {"description": "Redis is unavailable"}},
        tags=["recommendations"],
    )
    async def recommendations(
        user_id: UserId,
        scene: Annotated[Scene, Query(description="where the list is shown")] = "home",
        item_id: Annotated[
            str | None, Query(min_length=1, max_length=MAX_ID_CHARS, description="for product")
        ] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="list length")] = 10,
        diversity: Annotated[
            float | None, Query(ge=0, le=1, description="0 = relevance order")
        ] = None,
    ) -> Response:
        """The user's list for ``scene``: personal when the job wrote one, else trending.
        The served list is logged as one impression event (``event_id`` = ``request_id``)."""
        if scene == "product" and item_id is None:
            raise RequestValidationError([_missing("item_id", "required when scene=product")])
        body = await server.list_json(RecQuery(user_id, scene, item_id, k, diversity))
        return Response(body, media_type="application/json")


def _add_events(app: FastAPI, settings: Settings, clients: _Clients, metrics: ApiMetrics) -> None:
    limit = MAX_BATCH * (settings.max_event_bytes + 2) + 2

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        openapi_extra=_EVENTS_BODY,
        tags=["events"],
    )
    async def events(request: Request) -> Any:
        """Validate events like the job does and produce them all, or none."""
        body = await _read_limited(request, limit)
        if body is None:
            metrics.events_rejected.labels("too_large").inc()
            return _bad(413, BadBatch(None, "too_large", f"body exceeds {limit} bytes"))
        parsed = parse_batch(body, settings, _now_ms())
        if isinstance(parsed, BadBatch):
            metrics.events_rejected.labels(parsed.reason).inc()
            return _bad(400 if parsed.index is None else 422, parsed)
        _, sink = clients.get()
        await sink.deliver(parsed)
        metrics.events_accepted.inc(len(parsed))
        return Accepted(accepted=len(parsed))

    @app.delete("/v1/users/{user_id}", status_code=202, response_model=Forgotten, tags=["privacy"])
    async def forget(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
    ) -> Forgotten:
        """Erase a user: a ``forget`` tombstone to the job, then the user's Redis keys."""
        store, sink = clients.get()
        event_id = f"forget-{uuid.uuid4().hex}"
        await sink.deliver([forget_record(user_id, event_id, settings.hmac_key, _now_ms())])
        deleted = await store.forget(pseudonymise(user_id, settings.hmac_key))
        return Forgotten(user_id=user_id, event_id=event_id, deleted_keys=deleted)


def _add_features(app: FastAPI, settings: Settings, clients: _Clients) -> None:
    @app.get(
        "/v1/users/{user_id}/features",
        response_model=UserFeatures,
        responses={404: {"description": "the job has written no features for this user"}},
        tags=["users"],
    )
    async def features(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
    ) -> UserFeatures:
        """The user's windowed features, read from Redis under the user's pseudonym."""
        store, _ = clients.get()
        found = await store.features(pseudonymise(user_id, settings.hmac_key))
        if found is None:
            detail = (
                f"no features for user {user_id!r}: the job has not seen an event of this "
                "user yet, or the user was forgotten or expired"
            )
            raise HTTPException(status_code=404, detail=detail)
        return UserFeatures(user_id=user_id, features=found)


def _add_operations(
    app: FastAPI, settings: Settings, clients: _Clients, metrics: ApiMetrics
) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        """Redis, Kafka and job health; 503 when Redis or Kafka is down."""
        store, _ = clients.get()
        checks = await check_all(settings, store)
        healthy = all(checks[name]["ok"] for name in REQUIRED)
        body = {"status": "ok" if healthy else "unavailable", "components": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus_metrics() -> Response:
        """The API's metrics in the Prometheus text format (all worker processes')."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class _Timing:
    """ASGI middleware: latency and count of every HTTP request by endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(endpoint_of(scope["path"]), status, elapsed)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _bad(status: int, bad: BadBatch) -> JSONResponse:
    detail = {"index": bad.index, "reason": bad.reason, "detail": bad.detail}
    return JSONResponse({"detail": {**detail, "message": bad.message}}, status_code=status)


def _missing(name: str, message: str) -> dict[str, Any]:
    return {"type": "missing", "loc": ("query", name), "msg": message, "input": None}


def _unavailable(service: str) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "%s %s: %s unavailable: %r", request.method, endpoint_of(request.url.path), service, exc
        )
        return JSONResponse({"detail": unavailable_detail(service, exc)}, status_code=503)

    return handler


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
