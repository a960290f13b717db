"""The event producer against a real broker, the Redis list layout against a real Redis."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from connectors.producer import EventProducer
from connectors.redis_lists import (
    TRENDING_SUFFIX,
    ListReader,
    ListWriter,
    RecList,
    encode_rec_list,
    features_suffix,
    rec_key,
    rec_suffix,
)
from deploy.local_stack import create_topics
from flywheel import cli
from flywheel.events import pseudonymise
from flywheel.settings import Settings, load_settings

pytestmark = pytest.mark.integration

T0_MS = 1_700_000_000_000


def read_all(broker: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, by manual assignment (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def topic_settings(broker: str, unique: str) -> Settings:
    topic = f"events-{unique}"
    create_topics(broker, [topic], partitions=3)
    return load_settings(kafka_bootstrap=broker, events_topic=topic)


def test_events_are_keyed_by_pseudonym_and_keep_order(
    broker: str, topic_settings: Settings
) -> None:
    events = [
        {"event_id": f"e{i}", "user_id": f"user-{i % 10}", "item_id": f"i{i}", "action": "view"}
        | {"ts": T0_MS + i}
        for i in range(100)
    ]
    with EventProducer(topic_settings) as producer:
        for event in events:
            producer.send(event)
        producer.send_raw(b"{not json", key=None)

    records = read_all(broker, topic_settings.events_topic, expected=101)

    assert len(records) == 101
    malformed = [r for r in records if r.value == b"{not json"]
    assert len(malformed) == 1 and malformed[0].key is None
    by_user: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        if record.key is not None:
            payload = orjson.loads(record.value)
            key = pseudonymise(payload["user_id"], topic_settings.hmac_key)
            assert record.key == key.encode()
            by_user[payload["user_id"]].append((record.partition, record.offset, payload))
    assert sorted(p["event_id"] for rows in by_user.values() for *_, p in rows) == sorted(
        e["event_id"] for e in events
    )
    for rows in by_user.values():
        assert len({partition for partition, *_ in rows}) == 1  # one user, one partition
        rows.sort(key=lambda row: row[1])
        assert [p["ts"] for *_, p in rows] == sorted(p["ts"] for *_, p in rows)


@pytest.fixture
def redis_settings(redis_url: str, unique: str) -> Iterator[Settings]:
    settings = load_settings(redis_url=redis_url, redis_prefix=f"test-{unique}", list_ttl_s=60)
    yield settings
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_list_writer_and_reader_round_trip(redis_settings: Settings) -> None:
    prefix, client = redis_settings.redis_prefix, redis.Redis.from_url(redis_settings.redis_url)
    user = pseudonymise("alice", redis_settings.hmac_key)
    rec = RecList(user, "home", "online_mf", T0_MS, T0_MS + 40, [("i1", 0.9), ("i2", 0.5)])
    writer = ListWriter(client, prefix, redis_settings.list_ttl_s)
    writer.write_batch(
        [
            (rec_suffix("home", user), encode_rec_list(rec, model_version=3)),
            (features_suffix(user), orjson.dumps({"clicks_1h": 4})),
            (TRENDING_SUFFIX, orjson.dumps([["i9", 12.0], ["i1", 7.5]])),
        ]
    )
    reader = ListReader(redis_settings)

    assert reader.get("alice") == rec
    assert reader.get(user, pseudonymised=True) == rec
    assert reader.get("alice", scene="cart") is None
    assert reader.get("bob") is None
    assert reader.features("alice") == {"clicks_1h": 4}
    assert reader.features("bob") is None
    assert reader.trending() == [("i9", 12.0), ("i1", 7.5)]
    assert 0 < client.ttl(rec_key(prefix, "home", user)) <= 60
    assert not any(b"alice" in key for key in client.scan_iter(match=f"{prefix}:*"))

    newer = RecList(user, "home", "trending", T0_MS + 1, T0_MS + 50, [("i9", 12.0)])
    writer.write_batch([(rec_suffix("home", user), encode_rec_list(newer))])
    assert reader.get("alice") == newer
    reader.close()
    client.close()


def test_zero_ttl_writes_persistent_keys(redis_settings: Settings) -> None:
    client = redis.Redis.from_url(redis_settings.redis_url)
    ListWriter(client, redis_settings.redis_prefix, 0).write_batch([(TRENDING_SUFFIX, b"[]")])

    assert client.ttl(f"{redis_settings.redis_prefix}:trending") == -1
    assert ListReader(redis_settings, client).trending() == []
    client.close()


def test_cli_send_list_and_features(
    broker: str,
    topic_settings: Settings,
    redis_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {
        "KAFKA_BOOTSTRAP": broker,
        "EVENTS_TOPIC": topic_settings.events_topic,
        "REDIS_URL": redis_settings.redis_url,
        "REDIS_PREFIX": redis_settings.redis_prefix,
    }.items():
        monkeypatch.setenv(f"FLYWHEEL_{name}", value)
    argv = ["send", "--user", "carol", "--item", "sku-1", "--action", "click", "--scene", "home"]
    assert cli.main(argv) == 0
    (record,) = read_all(broker, topic_settings.events_topic, expected=1)
    assert orjson.loads(record.value)["user_id"] == "carol"

    user = pseudonymise("carol", redis_settings.hmac_key)
    rec = RecList(user, "home", "online_mf", T0_MS, T0_MS, [("sku-2", 0.75)])
    client = redis.Redis.from_url(redis_settings.redis_url)
    ListWriter(client, redis_settings.redis_prefix, 60).write_batch(
        [(rec_suffix("home", user), encode_rec_list(rec)), (features_suffix(user), b'{"n":1}')]
    )
    client.close()
    capsys.readouterr()
    assert cli.main(["list", "carol"]) == 0
    assert "sku-2" in capsys.readouterr().out
    assert cli.main(["features", user, "--pseudonymised"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"n": 1}
    assert cli.main(["list", "dave"]) == 1
