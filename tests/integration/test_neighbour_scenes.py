"""Item-to-item lists end to end on the real Redis (and the running job): the store reads a
scene's neighbour lists in one round trip, the API serves the product and cart scenes from
them, and the job learns them from shoppers who view one item after another."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis

from connectors.redis_lists import (
    ItemList,
    ListReader,
    ListWriter,
    encode_item_list,
    features_suffix,
    item_list_suffix,
)
from deploy.local_stack import free_port, query_prometheus
from flywheel.events import pseudonymise
from flywheel.settings import Settings, load_settings
from serving.recommend import Snapshot
from serving.store import RedisStore
from tests.conftest import RunningJob
from tests.integration.test_api import serve

pytestmark = pytest.mark.integration

TRENDING = [["t1", 9.0], ["t2", 8.0], ["t3", 7.0]]


@pytest.fixture(scope="module")
def settings(broker: str, redis_url: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return load_settings(
        kafka_bootstrap=broker,
        redis_url=redis_url,
        events_topic=f"events-{tag}",
        dlq_topic=f"events-{tag}.dlq",
        item_sync_topic=f"items-{tag}",
        redis_prefix=f"nb{tag}",
        metrics_port=free_port(),
    )


@pytest.fixture(scope="module")
def writer(settings: Settings) -> Iterator[ListWriter]:
    client = redis.Redis.from_url(settings.redis_url)
    writer = ListWriter(client, settings.redis_prefix, 0)
    writer.write_batch([("trending", orjson.dumps(TRENDING))])
    yield writer
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


def _similar(item: str, *ranked: tuple[str, float]) -> tuple[str, bytes]:
    return item_list_suffix(item), encode_item_list(ItemList(item, "cooccurrence", 1, 2, [*ranked]))


def _user(settings: Settings, writer: ListWriter, features: bytes | None) -> str:
    user = pseudonymise(f"shopper-{uuid.uuid4().hex[:8]}", settings.hmac_key)
    if features is not None:
        writer.write_batch([(features_suffix(user), features)])
    return user


def _snapshot(settings: Settings, user: str, scene: str, item_id: str | None = None) -> Snapshot:
    async def read() -> Snapshot:
        store = RedisStore(settings)
        try:
            return await store.snapshot(user, scene, item_id)
        finally:
            await store.close()

    return asyncio.run(read())


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = cast("dict[str, Any]", client.info("commandstats"))
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "get")}


def test_the_cart_scene_reads_the_cart_items_lists_in_one_round_trip(
    settings: Settings, writer: ListWriter
) -> None:
    tag = uuid.uuid4().hex[:6]
    c1, c2, c3 = f"c1-{tag}", f"c2-{tag}", f"c3-{tag}"
    writer.write_batch([_similar(c1, ("n1", 0.5)), _similar(c3, ("n3", 0.7), ("n1", 0.1))])
    user = _user(settings, writer, orjson.dumps({"cart": [c1, c2, c3], "recent": []}))
    _snapshot(settings, user, "cart")  # loads the script once
    client = redis.Redis.from_url(settings.redis_url)
    before = _calls(client)
    snapshot = _snapshot(settings, user, "cart")
    after = _calls(client)
    client.close()
    assert snapshot.neighbours == {c1: [("n1", 0.5)], c3: [("n3", 0.7), ("n1", 0.1)]}
    assert snapshot.features is not None and snapshot.features["cart"] == [c1, c2, c3]
    assert [item for item, _ in snapshot.trending] == ["t1", "t2", "t3"]
    assert after["evalsha"] - before["evalsha"] == 1 and after["get"] == before["get"]


@pytest.mark.parametrize(
    "features",
    [None, b"not json", b'{"cart": "c1"}', b'{"cart": [null, {"x": 1}]}', b'{"recent": []}'],
    ids=["no features", "undecodable", "cart not a list", "odd cart entries", "no cart"],
)
def test_a_missing_or_odd_cart_reads_no_neighbour_lists(
    settings: Settings, writer: ListWriter, features: bytes | None
) -> None:
    writer.write_batch([_similar("c1", ("n1", 0.5))])
    snapshot = _snapshot(settings, _user(settings, writer, features), "cart")
    assert snapshot.neighbours == {}
    assert [item for item, _ in snapshot.trending] == ["t1", "t2", "t3"]


def test_the_api_serves_product_and_cart_scenes_from_neighbour_lists(
    settings: Settings, writer: ListWriter
) -> None:
    writer.write_batch([_similar("sku", ("s1", 0.6), ("s2", 0.4)), _similar("box", ("s2", 0.3))])
    writer.write_batch([("rec:product:bad", b"{")])  # an undecodable list degrades to trending
    name = f"cart-{uuid.uuid4().hex[:6]}"
    cart = orjson.dumps({"cart": ["sku", "box"], "recent": [], "purchased": []})
    writer.write_batch([(features_suffix(pseudonymise(name, settings.hmac_key)), cart)])
    with serve(settings) as api:
        product = api.get(
            "/v1/recommendations",
            params={"user_id": "anyone", "scene": "product", "item_id": "sku", "k": 3},
        ).json()
        assert product["strategy"] == "cooccurrence"
        assert [(i["item_id"], i["reason"]) for i in product["items"]] == [
            ("s1", "similar"),
            ("s2", "similar"),
            ("t1", "trending"),
        ]
        params: dict[str, Any] = {"user_id": name, "scene": "cart", "k": 3}
        served = api.get("/v1/recommendations", params=params).json()
        assert served["strategy"] == "cooccurrence"
        assert [(i["item_id"], i["score"], i["reason"]) for i in served["items"]] == [
            ("s2", 0.7, "with_cart"),  # on both cart items' lists: 0.4 + 0.3
            ("s1", 0.6, "with_cart"),
            ("t1", 9.0, "trending"),
        ]
        params = {"user_id": "anyone", "scene": "product", "item_id": "bad", "k": 1}
        fallback = api.get("/v1/recommendations", params=params)
        assert fallback.status_code == 200 and fallback.json()["strategy"] == "trending"


# --- with the streaming job --------------------------------------------------------------------
def _event(user: str, item: str, action: str) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "action": action,
        "ts": int(time.time() * 1000),
    }


def test_shoppers_viewing_a_then_b_put_a_on_bs_list(running_job: RunningJob) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b, noise = f"nb-a-{tag}", f"nb-b-{tag}", f"nb-noise-{tag}"
    with running_job.producer() as producer:
        for i in range(8):
            user = f"nb-viewer-{tag}-{i}"
            producer.send(_event(user, a, "view"))
            producer.send(_event(user, b, "view"))
        producer.send(_event(f"nb-viewer-{tag}-x", noise, "view"))
        producer.send(_event(f"nb-viewer-{tag}-x", b, "view"))
    reader = ListReader(running_job.settings, running_job.redis)

    def learnt() -> bool:
        similar = reader.similar(b)
        return similar is not None and len(similar.items) == 2

    running_job.wait_for(learnt, timeout_s=180)  # the first wait also covers the job's start
    similar = reader.similar(b)
    assert similar is not None and similar.item == b and similar.strategy == "cooccurrence"
    assert [item for item, _ in similar.items] == [a, noise], "8 co-views outrank 1"

    late = f"nb-late-{tag}"  # a written list is rewritten when a new co-occurrence changes it
    with running_job.producer() as producer:
        producer.send(_event(f"nb-viewer-{tag}-y", late, "view"))
        producer.send(_event(f"nb-viewer-{tag}-y", b, "view"))
    running_job.wait_for(lambda: len(getattr(reader.similar(b), "items", ())) == 3)
    similar = reader.similar(b)
    assert similar is not None and similar.items[0][0] == a
    assert {item for item, _ in similar.items} == {a, noise, late}

    shopper = f"nb-cart-{tag}"
    with running_job.producer() as producer:
        producer.send(_event(shopper, b, "add_to_cart"))
    running_job.wait_for(lambda: (reader.features(shopper) or {}).get("cart") == [b])
    with serve(running_job.settings) as api:
        params: dict[str, Any] = {"user_id": shopper, "scene": "product", "item_id": b, "k": 2}
        product = api.get("/v1/recommendations", params=params).json()
        assert product["strategy"] == "cooccurrence"
        assert (product["items"][0]["item_id"], product["items"][0]["reason"]) == (a, "similar")
        params = {"user_id": shopper, "scene": "cart", "k": 5}
        cart = api.get("/v1/recommendations", params=params).json()
        assert cart["strategy"] == "cooccurrence"
        reasons = {i["item_id"]: i["reason"] for i in cart["items"]}
        assert reasons.get(a) == "with_cart" and b not in reasons
    port = running_job.prometheus_port
    running_job.wait_for(
        lambda: bool(query_prometheus(port, "flywheel_job_neighbour_lists_written_total > 0")),
        timeout_s=60,
    )
