"""The recommendation API served by uvicorn against the real broker and Redis: every endpoint,
bad input as 4xx (never 5xx), impressions and tombstones on the events topic, 503 when a
dependency is down, and (with the running job) events in, personal list out."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import redis
import uvicorn
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.redis_lists import (
    ListWriter,
    RecList,
    category_trending_suffix,
    encode_rec_list,
    features_suffix,
    item_categories_key,
    rec_key,
    rec_suffix,
)
from deploy.job_process import JobProcess
from deploy.local_stack import free_port
from flywheel.events import REJECT_REASONS, pseudonymise
from flywheel.settings import Settings
from serving.app import create_app
from serving.recommendations import fast_query
from tests.conftest import RunningJob, api_settings

pytestmark = pytest.mark.integration

TRENDING = [["t1", 9.0], ["t2", 8.0], ["t3", 7.0], ["t4", 6.0]]


@contextmanager
def serve(settings: Settings, *, fast_path: bool = True) -> Iterator[httpx.Client]:
    """The app on a free port in a uvicorn thread; a client bound to it."""
    port = free_port()
    app = create_app(settings, fast_path=fast_path)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def settings(broker: str, redis_url: str) -> Settings:
    return api_settings(broker, redis_url, "api")


@pytest.fixture(scope="module")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    ListWriter(client, settings.redis_prefix, 0).write_batch([("trending", orjson.dumps(TRENDING))])
    yield client
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def api(settings: Settings, redis_client: redis.Redis) -> Iterator[httpx.Client]:
    with serve(settings) as client:
        yield client


def _write_user(settings: Settings, client: redis.Redis, user: str, **features: Any) -> str:
    """A personal list (and features) for ``user``, as the job writes them; the pseudonym."""
    pseudonym = pseudonymise(user, settings.hmac_key)
    rec = RecList(pseudonym, "home", "online_mf", 1, 2, [("p1", 2.5), ("p2", 2.0), ("p3", 1.5)])
    entries = [(rec_suffix("home", pseudonym), encode_rec_list(rec))]
    entries.append((features_suffix(pseudonym), orjson.dumps({"n_events": 5, **features})))
    ListWriter(client, settings.redis_prefix, 60).write_batch(entries)
    return pseudonym


def _topic_events(
    settings: Settings,
    match: Callable[[dict[str, Any]], bool],
    expected: int,
    timeout_s: float = 20,
) -> list[tuple[bytes, dict[str, Any]]]:
    """``(key, event)`` of the events-topic records matching ``match``, by manual assignment."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(settings.events_topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        found: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                events = [(r.key, orjson.loads(r.value)) for r in records]
                found.extend((key, event) for key, event in events if match(event))
        return found
    finally:
        consumer.close()


def _event(user: str, item: str | None = "sku-1", **changes: Any) -> dict[str, Any]:
    """A click event; ``item=None`` leaves ``item_id`` out (for a list impression)."""
    base = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "action": "click"}
    event = {**base, "ts": int(time.time() * 1000), **changes}
    return {k: v for k, v in event.items() if v is not None}


# --- recommendations ---------------------------------------------------------------------------
def test_a_user_with_a_list_gets_it(
    api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    _write_user(settings, redis_client, "ann", purchased=["p2"])
    response = api.get("/v1/recommendations", params={"user_id": "ann", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert (body["user_id"], body["scene"], body["strategy"]) == ("ann", "home", "online_mf")
    assert len(body["request_id"]) == 32
    assert [(i["item_id"], i["reason"]) for i in body["items"]] == [
        ("p1", "personal"),
        ("p3", "personal"),  # p2 was purchased
        ("t1", "trending"),
        ("t2", "trending"),
    ]


def test_a_cold_user_gets_trending(api: httpx.Client) -> None:
    body = api.get("/v1/recommendations", params={"user_id": f"new-{uuid.uuid4().hex}"}).json()
    assert body["strategy"] == "trending"
    assert [(i["item_id"], i["score"], i["reason"]) for i in body["items"]] == [
        (item, score, "trending") for item, score in TRENDING
    ]


def test_cart_and_product_scenes(
    api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    _write_user(settings, redis_client, "carl", recent=["p1", "t1"], purchased=[])
    cart = api.get("/v1/recommendations", params={"user_id": "carl", "scene": "cart", "k": 3})
    assert [i["item_id"] for i in cart.json()["items"]] == ["p2", "p3", "t2"]
    params: dict[str, Any] = {"user_id": "carl", "scene": "product", "item_id": "t1", "k": 2}
    product = api.get("/v1/recommendations", params=params).json()
    assert product["strategy"] == "trending"
    assert [(i["item_id"], i["reason"]) for i in product["items"]] == [
        ("t2", "trending"),
        ("t3", "trending"),
    ]


def test_cold_shoppers_and_unknown_products_get_their_categories_trending(
    api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    tea, soap = f"tea-{uuid.uuid4().hex[:6]}", f"soap-{uuid.uuid4().hex[:6]}"
    entries = [  # as the job writes them: one list per category
        (category_trending_suffix(tea), orjson.dumps([["green", 5.0], ["t2", 4.0]])),
        (category_trending_suffix(soap), orjson.dumps([["bar", 3.0]])),
    ]
    ListWriter(redis_client, settings.redis_prefix, 60).write_batch(entries)
    redis_client.hset(item_categories_key(settings.redis_prefix), "sku-tea", tea)
    cold = f"cold-{uuid.uuid4().hex[:6]}"
    pseudonym = pseudonymise(cold, settings.hmac_key)
    features = {"n_events": 1, "categories": {soap: 1, tea: 2}}
    ListWriter(redis_client, settings.redis_prefix, 60).write_batch(
        [(features_suffix(pseudonym), orjson.dumps(features))]
    )
    body = api.get("/v1/recommendations", params={"user_id": cold, "k": 5}).json()
    assert body["strategy"] == "trending"
    assert [(i["item_id"], i["reason"]) for i in body["items"]] == [
        ("green", "popular_in_category"),  # the shopper's most counted category first
        ("bar", "popular_in_category"),
        ("t2", "popular_in_category"),
        ("t1", "trending"),
        ("t3", "trending"),
    ]
    params: dict[str, Any] = {"user_id": cold, "scene": "product", "item_id": "sku-tea", "k": 3}
    product = api.get("/v1/recommendations", params=params).json()
    assert [(i["item_id"], i["reason"]) for i in product["items"]] == [
        ("green", "popular_in_category"),  # the product's category, not the shopper's
        ("t2", "popular_in_category"),
        ("t1", "trending"),
    ]


def test_diversity_caps_items_per_category_from_the_jobs_categories(
    api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    user = f"div-{uuid.uuid4().hex[:6]}"
    pseudonym = pseudonymise(user, settings.hmac_key)
    ranked = [(f"d{i}", 10.0 - i) for i in range(12)]  # d0-d7 dairy, d8-d11 one each
    rec = RecList(pseudonym, "home", "online_mf", 1, 2, ranked)
    ListWriter(redis_client, settings.redis_prefix, 60).write_batch(
        [(rec_suffix("home", pseudonym), encode_rec_list(rec))]
    )
    categories = {f"d{i}": "dairy" if i < 8 else f"other{i}" for i in range(12)}
    redis_client.hset(item_categories_key(settings.redis_prefix), mapping=categories)

    def spread(diversity: float) -> tuple[int, bool]:
        params = {"user_id": user, "k": 6, "diversity": diversity}
        body = api.get("/v1/recommendations", params=params).json()
        return len({categories[i["item_id"]] for i in body["items"]}), body["diversified"]

    assert spread(0.0) == (1, False)  # relevance order: six dairy items
    low, high = spread(0.3), spread(1.0)
    assert low[1] and high[1]
    assert 1 < low[0] <= high[0] and high[0] == 5


def test_the_fast_path_answers_like_the_fastapi_route(
    api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    _write_user(settings, redis_client, "fran", purchased=["p2"], recent=["p1"], cart=["t1"])
    served: list[dict[str, Any]] = [
        {"user_id": "fran"},
        {"user_id": "fran", "k": 2},
        {"user_id": "fran", "k": 100, "scene": "cart"},
        {"user_id": "fran", "scene": "product", "item_id": "t2", "k": 3},
        {"user_id": "fran", "diversity": "0.5", "item_id": "p3"},
        {"user_id": "zoë & co", "unknown": "x"},
    ]
    refused: list[dict[str, Any]] = [
        {"user_id": "fran", "k": "010"},
        {"user_id": "fran", "diversity": "1e-1"},
        {"user_id": "fran", "k": 0},
        {"user_id": "fran", "scene": "product"},
        {"user_id": ""},
    ]
    assert all(fast_query(urlencode(p).encode()) is not None for p in served)  # fast path
    assert all(fast_query(urlencode(p).encode()) is None for p in refused)  # the route
    with serve(settings, fast_path=False) as reference:
        for params in [*served, *refused, {"user_id": ["a", "b"]}]:
            fast = api.get("/v1/recommendations", params=params)
            slow = reference.get("/v1/recommendations", params=params)
            assert (fast.status_code, fast.headers["content-type"]) == (
                slow.status_code,
                slow.headers["content-type"],
            )
            fast_body, slow_body = fast.json(), slow.json()
            if fast.status_code == 200:
                assert fast_body.pop("request_id") != slow_body.pop("request_id")
            assert fast_body == slow_body, params


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u" * 129}, "user_id"),
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": 101}, "k"),
        ({"user_id": "u", "k": "ten"}, "k"),
        ({"user_id": "u", "scene": "checkout"}, "scene"),
        ({"user_id": "u", "scene": "product"}, "item_id"),
        ({"user_id": "u", "diversity": 1.5}, "diversity"),
    ],
)
def test_bad_queries_are_422_naming_the_field(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    response = api.get("/v1/recommendations", params=params)
    assert response.status_code == 422
    assert field in {err["loc"][-1] for err in response.json()["detail"]}


def test_a_served_list_is_logged_as_one_impression_event(
    api: httpx.Client, settings: Settings
) -> None:
    user = f"viewer-{uuid.uuid4().hex[:6]}"
    body = api.get("/v1/recommendations", params={"user_id": user, "k": 3}).json()
    found = _topic_events(settings, lambda e: e.get("request_id") == body["request_id"], 2, 5)
    assert len(found) == 1  # one record for the list, not one per item
    key, event = found[0]
    assert event["item_ids"] == [i["item_id"] for i in body["items"]]  # in the order shown
    assert "item_id" not in event
    assert (event["action"], event["user_id"], event["scene"], event["strategy"]) == (
        "impression",
        user,
        "home",
        "trending",
    )
    assert event["event_id"] == body["request_id"]
    assert key == pseudonymise(user, settings.hmac_key).encode()


# --- events ------------------------------------------------------------------------------------
def test_events_are_produced_keyed_by_pseudonym(api: httpx.Client, settings: Settings) -> None:
    marker = uuid.uuid4().hex
    one = api.post("/v1/events", json=_event("eve", marker))
    shown = _event("fay", None, action="impression", item_ids=[marker, "other"])
    many = api.post("/v1/events", json=[_event("eve", marker), shown])
    assert (one.status_code, one.json()) == (202, {"accepted": 1})
    assert (many.status_code, many.json()) == (202, {"accepted": 2})
    found = _topic_events(
        settings, lambda e: marker in (e.get("item_id"), *e.get("item_ids", ())), 3
    )
    assert sorted(e["user_id"] for _, e in found) == ["eve", "eve", "fay"]  # raw: job hashes
    assert [e["item_ids"] for _, e in found if e["user_id"] == "fay"] == [[marker, "other"]]
    assert {key for key, e in found if e["user_id"] == "eve"} == {
        pseudonymise("eve", settings.hmac_key).encode()
    }


def _bad_bodies(marker: str) -> dict[str, bytes]:
    ok = _event("u", marker)
    return {
        "oversized": orjson.dumps([ok, {**ok, "pad": "x" * 20_000}]),
        "malformed_json": b'[{"event_id": "1", "user_id": ',
        "not_an_object": orjson.dumps([ok, [1, 2, 3]]),
        "missing_field": orjson.dumps([ok, {k: v for k, v in ok.items() if k != "ts"}]),
        "wrong_type": orjson.dumps([ok, {**ok, "ts": "yesterday"}]),
        "unknown_action": orjson.dumps([ok, {**ok, "action": "teleport"}]),
        "bad_timestamp": orjson.dumps([ok, {**ok, "ts": 42}]),
        "bad_item_list": orjson.dumps([ok, {**ok, "action": "impression", "item_ids": [marker]}]),
    }


def test_every_bad_event_class_is_4xx_and_produces_nothing(
    api: httpx.Client, settings: Settings
) -> None:
    marker = uuid.uuid4().hex
    bodies = _bad_bodies(marker)
    assert set(bodies) == set(REJECT_REASONS)
    for reason, body in bodies.items():
        response = api.post(
            "/v1/events", content=body, headers={"content-type": "application/json"}
        )
        detail = response.json()["detail"]
        if reason == "malformed_json":
            assert (response.status_code, detail["index"]) == (400, None)
        else:
            assert (response.status_code, detail["index"]) == (422, 1), reason
        assert detail["reason"] == reason
    missing = api.post("/v1/events", content=bodies["missing_field"]).json()["detail"]
    assert missing["message"] == "event 1: missing_field: missing field ts"
    for item_ids, message in [
        ([], "event 0: bad_item_list: item_ids must hold 1..100 item ids, got 0"),
        ([marker, 3.5], "event 0: wrong_type: item_ids[1] must be a non-empty string of <= 128"),
    ]:
        shown = _event("u", None, action="impression", item_ids=item_ids)
        response = api.post("/v1/events", json=shown)
        assert response.status_code == 422
        assert response.json()["detail"]["message"].startswith(message)
    for body in (b"[]", orjson.dumps([_event("u", marker)] * 1001), b'"x"'):
        assert api.post("/v1/events", content=body).status_code == 400
    forget = api.post("/v1/events", json=_event("u", marker, action="forget"))
    assert forget.status_code == 422
    api.post("/v1/events", json=_event("u", f"{marker}-ok"))  # a sentinel after the bad ones
    assert len(_topic_events(settings, lambda e: e.get("item_id") == f"{marker}-ok", 1)) == 1
    assert _topic_events(settings, lambda e: e.get("item_id") == marker, 1, timeout_s=3) == []


# --- erasure -----------------------------------------------------------------------------------
def test_delete_removes_the_users_keys_and_sends_a_tombstone(
    api: httpx.Client,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    user = f"leaver-{uuid.uuid4().hex[:6]}"
    pseudonym = _write_user(settings, redis_client, user)
    cart = RecList(pseudonym, "cart", "online_mf", 1, 2, [("c1", 1.0)])
    ListWriter(redis_client, settings.redis_prefix, 60).write_batch(
        [(rec_suffix("cart", pseudonym), encode_rec_list(cart))]
    )
    response = api.delete(f"/v1/users/{user}")
    assert response.status_code == 202
    assert response.json()["deleted_keys"] == 3
    assert not list(redis_client.scan_iter(f"{settings.redis_prefix}:*{pseudonym}*"))
    event_id = response.json()["event_id"]
    found = _topic_events(settings, lambda e: e.get("event_id") == event_id, 1)
    assert [(e["user_id"], e["item_id"], e["action"]) for _, e in found] == [(user, "-", "forget")]
    after = api.get("/v1/recommendations", params={"user_id": user}).json()
    assert after["strategy"] == "trending"
    assert api.delete("/v1/users/" + "u" * 129).status_code == 422


# --- operations --------------------------------------------------------------------------------
def test_healthz_metrics_and_docs(api: httpx.Client) -> None:
    health = api.get("/healthz")
    assert health.status_code == 200
    components = health.json()["components"]
    assert components["redis"]["ok"] and components["kafka"]["ok"]
    assert components["job"]["ok"] is False  # no job in this module: reported, not fatal
    api.get("/v1/recommendations", params={"user_id": "m", "k": 0})
    text = api.get("/metrics").text
    assert 'flywheel_api_request_seconds_count{endpoint="/v1/recommendations",status="200"}' in text
    assert 'flywheel_api_requests_total{endpoint="/v1/recommendations",status="422"}' in text
    templates = ('endpoint="/v1/users/{user_id}"', 'endpoint="/v1/users/{user_id}/features"')
    assert "user_id" not in text.replace(templates[0], "").replace(templates[1], "")  # no raw ids
    assert api.get("/docs").status_code == 200
    assert "/v1/recommendations" in api.get("/openapi.json").json()["paths"]


def test_a_down_dependency_is_503_never_500(settings: Settings) -> None:
    dead = f"127.0.0.1:{free_port()}"
    no_redis = settings.with_overrides(redis_url=f"redis://{dead}/0")
    with serve(no_redis) as client, serve(no_redis, fast_path=False) as route:
        assert client.get("/healthz").status_code == 503
        assert client.get("/healthz").json()["components"]["redis"]["ok"] is False
        fast = client.get("/v1/recommendations", params={"user_id": "u"})
        slow = route.get("/v1/recommendations", params={"user_id": "u"})
        assert fast.status_code == slow.status_code == 503
        assert (
            fast.json()
            == slow.json()
            == {"detail": "Redis unavailable (ConnectionError); retry later"}
        )
    no_kafka = settings.with_overrides(kafka_bootstrap=dead)
    with serve(no_kafka) as client:
        assert client.get("/healthz").status_code == 503
        assert client.post("/v1/events", json=_event("u")).status_code == 503
        assert client.delete("/v1/users/u").status_code == 503
        served = client.get("/v1/recommendations", params={"user_id": "u"})
        assert served.status_code == 200  # lists are served while Kafka is down


# --- with the streaming job --------------------------------------------------------------------
def test_events_posted_to_the_api_become_a_personal_list(running_job: RunningJob) -> None:
    user = f"api-shopper-{uuid.uuid4().hex[:6]}"
    with serve(running_job.settings) as client:
        # a peer's purchases put items in the model that the user has not bought
        events = [_event(f"{user}-peer", f"peer-{i}", action="purchase") for i in range(5)]
        events += [_event(user, f"warm-{i}", action="purchase") for i in range(5)]
        assert client.post("/v1/events", json=events).status_code == 202

        def personal() -> bool:
            params: dict[str, Any] = {"user_id": user, "k": 1}
            return (
                client.get("/v1/recommendations", params=params).json()["strategy"] == "online_mf"
            )

        running_job.wait_for(personal)
        items = client.get("/v1/recommendations", params={"user_id": user}).json()["items"]
        assert not {i["item_id"] for i in items} & {f"warm-{i}" for i in range(5)}
        assert client.delete(f"/v1/users/{user}").status_code == 202
        job_settings = running_job.settings
        key = rec_key(job_settings.redis_prefix, "home", pseudonymise(user, job_settings.hmac_key))
        running_job.wait_for(lambda: running_job.redis.get(key) is None)


# --- several worker processes --------------------------------------------------------------------
def test_worker_processes_share_the_port_and_their_metrics(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    workers = settings.with_overrides(api_workers=2, api_port=free_port(), var_dir=tmp_path)
    process = JobProcess(workers, tmp_path / "api.log", ("api",)).start()
    base = f"http://127.0.0.1:{workers.api_port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(base):
            assert process.running, (tmp_path / "api.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.3)
        before = _served_lists(base)
        for i in range(40):  # a new connection each: the workers accept in turn
            response = httpx.get(f"{base}/v1/recommendations", params={"user_id": f"w{i}"})
            assert response.status_code == 200 and response.json()["items"]
        assert _served_lists(base) - before == 40  # whichever worker answers /metrics
        files = {p.name for p in (tmp_path / "api-metrics").glob("counter_*.db")}
        assert len(files) >= 2  # values written by more than one process
    finally:
        process.stop()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _served_lists(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "flywheel_api_lists_served_total"
    )
