"""``GET /v1/recommendations``: the list server and its ASGI fast path.

:class:`ListServer` turns one validated query into the response body: one Redis round trip
(:meth:`serving.store.RedisStore.snapshot`; a second one only for a list that needs trending,
to read per-category trending, and, with diversity above 0, one for the categories of items not
yet cached), the experiment's arm (:mod:`serving.assignment`),
the ranking rules (:mod:`serving.recommend`), one impression event for the served list
(:func:`serving.ingest.impression_record`, fire-and-forget) and the JSON document of
:class:`Recommendations`, encoded by orjson straight from the served list.

Two doors lead to it. The FastAPI route (declared in :mod:`serving.app`) validates the query
parameters and documents them in OpenAPI; :class:`FastRecommendations`, an ASGI middleware in
front of FastAPI's router, answers the plainly valid requests itself (see :func:`fast_query`)
and hands every other one to that route, so malformed queries get FastAPI's 422 naming the
field, exactly as without the fast path. FastAPI's routing, parameter solving and response
classes were most of the API's CPU time per request; the fast path skips them and gives the
same status and body (the integration tests compare both doors).

State: the request-id source (a random per-process prefix and a counter) and the arm chooser
of an experiment (bounded, see :mod:`serving.assignment`); nothing per request survives it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from flywheel.events import MAX_ID_CHARS, MAX_SHOWN_ITEMS, pseudonymise
from flywheel.settings import Settings
from online_models.experiments import Assignment
from serving.assignment import ArmChooser
from serving.ingest import impression_record
from serving.kafka_sink import KafkaSink
from serving.metrics import ApiMetrics
from serving.recommend import (
    SCENES,
    ItemSignals,
    RecRequest,
    Served,
    Snapshot,
    blend,
    preferred_categories,
    recommend,
    uses_trending,
)
from serving.store import RedisStore

__all__ = [
    "MAX_K",
    "PATH",
    "FastRecommendations",
    "Item",
    "ListServer",
    "RecQuery",
    "Recommendations",
    "fast_query",
    "unavailable_detail",
]

PATH = "/v1/recommendations"
MAX_K = MAX_SHOWN_ITEMS
"""Largest ``k`` a request may ask for: a served list fits in one impression event."""
DEFAULT_K = 10

log = logging.getLogger(__name__)
Scene = Literal["home", "cart", "product"]
Clients = Callable[[], tuple[RedisStore, KafkaSink]]
_K = re.compile(r"[1-9][0-9]{0,2}")
_DIVERSITY = re.compile(r"[01](\.[0-9]{1,17})?")


class Item(BaseModel):
    """One served item."""

    item_id: str
    score: float
    reason: str = Field(
        description="personal (the user's own list), similar (bought or viewed with the "
        "product), with_cart (with the items in the cart) or trending"
    )


class Recommendations(BaseModel):
    """A served list; ``request_id`` is also the ``event_id`` of the list's impression event."""

    user_id: str
    scene: Scene
    strategy: str
    request_id: str
    diversified: bool
    items: list[Item]
    experiment: str | None = Field(None, description="experiment that assigned the request")
    arm: str | None = Field(None, description="the experiment's arm (a strategy) that served it")
    propensity: float | None = Field(None, description="probability the arm had of being chosen")


@dataclass(frozen=True, slots=True)
class RecQuery:
    """A validated query: ``scene`` in :data:`~serving.recommend.SCENES` (``product`` with an
    ``item_id``), ``k`` in ``1..MAX_K``, ``diversity`` in ``[0, 1]`` or ``None``."""

    user_id: str
    scene: str = "home"
    item_id: str | None = None
    k: int = DEFAULT_K
    diversity: float | None = None


def fast_query(raw: bytes) -> RecQuery | None:
    """The query of a plainly valid request, else ``None`` (FastAPI's route then validates it).

    Parsed as FastAPI parses it (Latin-1, ``parse_qsl`` keeping blank values); anything
    unusual (a repeated parameter, a ``k`` or ``diversity`` not written as plain decimals, an
    out-of-range value, a product without ``item_id``) is left to the route.

    >>> fast_query(b"user_id=ann&k=5&scene=cart")
    RecQuery(user_id='ann', scene='cart', item_id=None, k=5, diversity=None)
    >>> fast_query(b"user_id=ann&k=0") is None, fast_query(b"user_id=a&user_id=b") is None
    (True, True)
    """
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    values = dict(pairs)
    user_id, scene = values.get("user_id"), values.get("scene", "home")
    item_id, k, diversity = values.get("item_id"), values.get("k"), values.get("diversity")
    if len(values) != len(pairs) or user_id is None or not _is_id(user_id):
        return None
    if scene not in SCENES or (item_id is not None and not _is_id(item_id)):
        return None
    if scene == "product" and item_id is None:
        return None
    if k is not None and (_K.fullmatch(k) is None or int(k) > MAX_K):
        return None
    if diversity is not None and (_DIVERSITY.fullmatch(diversity) is None or float(diversity) > 1):
        return None
    size = DEFAULT_K if k is None else int(k)
    return RecQuery(user_id, scene, item_id, size, None if diversity is None else float(diversity))


class ListServer:
    """Serves :class:`RecQuery` s for ``settings`` with the app's ``clients`` (available while
    the app's lifespan runs)."""

    def __init__(self, settings: Settings, clients: Clients, metrics: ApiMetrics) -> None:
        self.settings = settings
        self._clients = clients
        self._served = metrics.lists_served_counter
        experiment = settings.experiment_spec
        self._chooser = None
        if experiment is not None:
            self._chooser = ArmChooser(
                experiment, settings.hmac_key, lambda name: clients()[0].arm_counts(name)
            )
        self._next_id = _request_ids()

    async def list_json(self, query: RecQuery) -> bytes:
        """The :class:`Recommendations` document for ``query`` (raises ``RedisError`` when
        Redis cannot be read); logs the list's impression event."""
        s = self.settings
        store, sink = self._clients()
        user = pseudonymise(query.user_id, s.hmac_key)
        snapshot = await store.snapshot(user, query.scene, query.item_id)
        chooser = self._chooser
        arm = await chooser.assign(user, query.scene) if chooser is not None else None
        lam = s.diversity_lambda if query.diversity is None else query.diversity
        strategy = arm.arm if arm is not None else None
        scene, k, item_id = query.scene, query.k, query.item_id
        request = RecRequest(scene, k, item_id, lam, s.exclude_purchased, strategy)
        served = recommend(snapshot, request)
        if s.category_trending_s and uses_trending(served):  # a 2nd round trip, cold lists only
            snapshot = await _with_category_trending(store, snapshot, query, s.top_n)
            if snapshot.category_trending:
                served = recommend(snapshot, request)
        if lam > 0 and len(served.items) > 1:  # per-category caps need the items' categories
            categories = await store.categories.of(_candidates(snapshot))
            served = recommend(snapshot, request, ItemSignals(categories=categories))
        request_id = self._next_id()
        if served.items:  # one impression event for the whole list (fire-and-forget)
            ids = [s.item_id for s in served.items]
            shown = (user, query.user_id, query.scene, served.strategy, request_id, ids)
            sink.fire([impression_record(*shown, _now_ms(), arm)])
        self._served(query.scene, served.strategy).inc()
        return _document(query, request_id, served, arm)

    async def respond(self, query: RecQuery) -> tuple[int, bytes]:
        """``(status, body)``: 200 and the list, or 503 when Redis is unavailable."""
        try:
            return 200, await self.list_json(query)
        except RedisError as exc:
            log.warning("GET %s: Redis unavailable: %r", PATH, exc)
            return 503, orjson.dumps({"detail": unavailable_detail("Redis", exc)})


async def _with_category_trending(
    store: RedisStore, snapshot: Snapshot, query: RecQuery, n: int
) -> Snapshot:
    """``snapshot`` with the trending of the viewed product's category (product scene) or of
    the shopper's most counted categories (other scenes), when Redis has any."""
    if query.scene == "product" and query.item_id:
        lists = [await store.product_category_trending(query.item_id)]
    else:
        lists = await store.category_trending(preferred_categories(snapshot.features))
    blended = blend(lists, n)
    return replace(snapshot, category_trending=blended) if blended else snapshot


def _candidates(snapshot: Snapshot) -> list[str]:
    """Every item a list may be built from (diversity needs their categories)."""
    personal = snapshot.personal.items if snapshot.personal is not None else []
    ranked = [*personal, *snapshot.category_trending, *snapshot.trending]
    ranked += [entry for similar in snapshot.neighbours.values() for entry in similar]
    return [item for item, _ in ranked]


class FastRecommendations:
    """ASGI middleware: answers plainly valid ``GET /v1/recommendations`` requests with
    :class:`ListServer` directly; every other request goes on to ``app``."""

    def __init__(self, app: ASGIApp, server: ListServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            query = fast_query(scope["query_string"])
            if query is not None:
                status, body = await self.server.respond(query)
                headers = [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def unavailable_detail(service: str, exc: BaseException) -> str:
    """The ``detail`` of a 503 answer: which dependency failed, never its address."""
    return f"{service} unavailable ({type(exc).__name__}); retry later"


def _document(query: RecQuery, request_id: str, served: Served, arm: Assignment | None) -> bytes:
    """The :class:`Recommendations` JSON (the :class:`~serving.recommend.Scored` dataclasses
    encode as ``item_id, score, reason``)."""
    return orjson.dumps(
        {
            "user_id": query.user_id,
            "scene": query.scene,
            "strategy": served.strategy,
            "request_id": request_id,
            "diversified": served.diversified,
            "items": served.items,
            "experiment": arm.experiment if arm is not None else None,
            "arm": arm.arm if arm is not None else None,
            "propensity": arm.propensity if arm is not None else None,
        }
    )


def _is_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS


def _request_ids() -> Callable[[], str]:
    """A source of request ids: 32 hex characters, a random per-process prefix and a counter
    (unique across processes and restarts without a system call per request)."""
    prefix = os.urandom(8).hex()
    counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
    return lambda: f"{prefix}{next(counter):016x}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
