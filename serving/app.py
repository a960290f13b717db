"""The recommendation API: an app factory over Redis (lists) and Kafka (events).

Endpoints (OpenAPI docs at ``/docs``):

- ``GET /v1/recommendations?user_id=&scene=home|cart|product&item_id=&k=10&diversity=``:
  the list to show (rules in :mod:`serving.recommend`); every served list is logged as one
  ``impression`` event carrying its items in order (``item_ids``) to the events topic
  (fire-and-forget, losses counted). When ``FLYWHEEL_EXPERIMENT`` runs on the scene, an arm is
  chosen per request (:mod:`serving.assignment`), serves its strategy, and is named in the
  response and on the impression (``experiment``, ``arm``, ``propensity``). The response is
  encoded with orjson straight from the served list (the :class:`Recommendations` model
  documents it; it is not re-validated per request).
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
app's lifespan; one app serves one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.events import MAX_ID_CHARS, MAX_SHOWN_ITEMS, pseudonymise
from flywheel.settings import Settings
from online_models.experiments import Assignment
from serving.assignment import ArmChooser
from serving.health import REQUIRED, check_all
from serving.ingest import MAX_BATCH, BadBatch, forget_record, impression_record, parse_batch
from serving.kafka_sink import KafkaSink, SinkError
from serving.metrics import ApiMetrics, endpoint_of
from serving.recommend import RecRequest, Served, recommend
from serving.store import RedisStore
from serving.web import add_web_page

__all__ = ["MAX_K", "create_app", "serve"]

MAX_K = MAX_SHOWN_ITEMS
"""Largest ``k`` a request may ask for: a served list fits in one impression event."""

log = logging.getLogger(__name__)
Scene = Literal["home", "cart", "product"]
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


class Item(BaseModel):
    """One served item."""

    item_id: str
    score: float
    reason: str = Field(
        description="personal (the user's own list), similar (bought or viewed with the "
        "product), with_cart (with the items in the cart) or trending"
    )


class Recommendations(BaseModel):
    """A served list; ``request_id`` is also on the list's impression events."""

    user_id: str
    scene: Scene
    strategy: str
    request_id: str
    diversified: bool
    items: list[Item]
    experiment: str | None = Field(None, description="experiment that assigned the request")
    arm: str | None = Field(None, description="the experiment's arm (a strategy) that served it")
    propensity: float | None = Field(None, description="probability the arm had of being chosen")


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


def create_app(settings: Settings, metrics: ApiMetrics | None = None) -> FastAPI:
    """The API bound to ``settings``; ``metrics`` default to a fresh registry."""
    metrics = metrics or ApiMetrics()
    clients = _Clients()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        clients.store = RedisStore(settings)
        clients.sink = KafkaSink(settings, on_dropped=metrics.impressions_lost.inc)
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
    app.add_middleware(_Timing, metrics=metrics)
    app.add_exception_handler(RedisError, _unavailable("Redis"))
    app.add_exception_handler(SinkError, _unavailable("Kafka"))
    _add_recommendations(app, settings, clients, metrics)
    _add_events(app, settings, clients, metrics)
    _add_features(app, settings, clients)
    _add_operations(app, settings, clients, metrics)
    add_web_page(app)
    return app


def serve(settings: Settings) -> None:
    """Run the API with uvicorn on ``settings.api_host:settings.api_port`` until stopped.

    Uvicorn's access log is off: request lines would put raw user ids in the logs; the
    ``/metrics`` endpoint counts requests by endpoint and status instead.
    """
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,  # its lines carry raw user ids (query strings, /v1/users/{id})
    )


def _add_recommendations(
    app: FastAPI, settings: Settings, clients: _Clients, metrics: ApiMetrics
) -> None:
    experiment = settings.experiment_spec
    chooser = None
    if experiment is not None:
        chooser = ArmChooser(
            experiment, settings.hmac_key, lambda name: clients.get()[0].arm_counts(name)
        )

    new_request_id = _request_ids()
    served_counters = metrics.lists_served_counter

    @app.get("/v1/recommendations", response_model=Recommendations, tags=["recommendations"])
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
        """The user's list for ``scene``: personal when the job wrote one, else trending."""
        if scene == "product" and item_id is None:
            raise RequestValidationError([_missing("item_id", "required when scene=product")])
        store, sink = clients.get()
        user = pseudonymise(user_id, settings.hmac_key)
        snapshot = await store.snapshot(user, scene, item_id)
        arm = await chooser.assign(user, scene) if chooser is not None else None
        lam = settings.diversity_lambda if diversity is None else diversity
        strategy = arm.arm if arm is not None else None
        request = RecRequest(scene, k, item_id, lam, settings.exclude_purchased, strategy)
        served = recommend(snapshot, request)
        request_id = new_request_id()
        if served.items:  # one impression event for the whole list (fire-and-forget)
            ids = [s.item_id for s in served.items]
            shown = (user, user_id, scene, served.strategy, request_id, ids, _now_ms(), arm)
            sink.fire([impression_record(*shown)])
        served_counters(scene, served.strategy).inc()
        body = _recommendations_json(user_id, scene, request_id, served, arm)
        return Response(body, media_type="application/json")


def _recommendations_json(
    user_id: str, scene: str, request_id: str, served: Served, arm: Assignment | None
) -> bytes:
    """The :class:`Recommendations` document of a served list, encoded by orjson (the
    :class:`~serving.recommend.Scored` dataclasses encode as ``item_id, score, reason``)."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "scene": scene,
            "strategy": served.strategy,
            "request_id": request_id,
            "diversified": served.diversified,
            "items": served.items,
            "experiment": arm.experiment if arm is not None else None,
            "arm": arm.arm if arm is not None else None,
            "propensity": arm.propensity if arm is not None else None,
        }
    )


def _request_ids() -> Callable[[], str]:
    """A source of request ids: 32 hex characters, a random per-process prefix and a counter
    (unique across processes and restarts without a system call per request)."""
    prefix = os.urandom(8).hex()
    counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
    return lambda: f"{prefix}{next(counter):016x}"


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
        """The API's metrics in the Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


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
        detail = f"{service} unavailable ({type(exc).__name__}); retry later"
        return JSONResponse({"detail": detail}, status_code=503)

    return handler


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
