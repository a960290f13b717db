"""The running job against the real broker, Redis, Flink mini-cluster and Prometheus:
events change lists, bad input is dead-lettered with its reason, duplicates are dropped, and
Prometheus scrapes both metric sources."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.redis_lists import ListReader
from deploy.local_stack import query_prometheus
from flywheel.events import REJECT_REASONS, pseudonymise

pytestmark = pytest.mark.integration


def _event(user: str, item: str, action: str = "click", **extra: object) -> dict[str, object]:
    base = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "action": action}
    return {**base, "ts": int(time.time() * 1000), **extra}


def _features(job, user: str) -> dict:  # type: ignore[no-untyped-def]
    return ListReader(job.settings, job.redis).features(user) or {}


def test_events_change_the_users_list(running_job) -> None:  # type: ignore[no-untyped-def]
    user = f"shopper-{uuid.uuid4().hex[:6]}"
    reader = ListReader(running_job.settings, running_job.redis)
    with running_job.producer() as producer:
        for i in range(5):  # a warm-up so the user is past the cold-start threshold
            producer.send(_event(user, f"warm-{i}", "purchase", category="tea"))
        producer.flush()
    running_job.wait_for(lambda: (_features(running_job, user).get("n_events") or 0) >= 5)
    before = reader.get(user)
    assert before is not None and before.strategy == "online_mf"

    sent = _event(user, "fresh-item", "add_to_cart")
    with running_job.producer() as producer:
        producer.send(sent)
    running_job.wait_for(lambda: (reader.get(user) or before).event_ts == sent["ts"])
    after = reader.get(user)
    assert after is not None and after.written_ts >= before.written_ts
    features = _features(running_job, user)
    assert features["recent"][-1] == "fresh-item"
    assert features["totals"] == {"purchase": 5, "add_to_cart": 1}
    assert features["windows"]["3600s"] == {"add_to_cart": 1, "purchase": 5}
    purchased = {item for item, _ in after.items}
    assert not purchased & {f"warm-{i}" for i in range(5)}, "purchased items are excluded"


def test_duplicates_are_dropped(running_job) -> None:  # type: ignore[no-untyped-def]
    user = f"dup-{uuid.uuid4().hex[:6]}"
    event = _event(user, "sku-1", "purchase")
    with running_job.producer() as producer:
        producer.send(event)
        producer.send(event)
        producer.send(_event(user, "sku-2", "view"))
    running_job.wait_for(lambda: (_features(running_job, user).get("n_events") or 0) >= 2)
    time.sleep(1.0)  # give a wrongly counted duplicate the chance to show up
    assert _features(running_job, user)["totals"] == {"purchase": 1, "view": 1}


BAD_PAYLOADS = {
    "oversized": orjson.dumps({**_event("u", "i"), "pad": "x" * 20000}),
    "malformed_json": b'{"event_id": "1", "user_id": ',
    "not_an_object": b"[1, 2, 3]",
    "missing_field": orjson.dumps({"event_id": "1", "user_id": "u", "action": "click"}),
    "wrong_type": orjson.dumps({**_event("u", "i"), "ts": "yesterday"}),
    "unknown_action": orjson.dumps(_event("u", "i", action="teleport")),
    "bad_timestamp": orjson.dumps({**_event("u", "i"), "ts": 42}),
}


def test_every_bad_input_class_is_dead_lettered(running_job) -> None:  # type: ignore[no-untyped-def]
    assert set(BAD_PAYLOADS) == set(REJECT_REASONS)
    marker = uuid.uuid4().hex
    user = f"after-bad-{marker[:6]}"
    with running_job.producer() as producer:
        for payload in BAD_PAYLOADS.values():
            producer.send_raw(payload.replace(b'"u"', f'"{marker}"'.encode()))
        producer.send(_event(user, "ok-item", "click"))
    consumer = KafkaConsumer(bootstrap_servers=running_job.settings.kafka_bootstrap)
    partition = TopicPartition(running_job.settings.dlq_topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < len(BAD_PAYLOADS):
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                letter = orjson.loads(record.value)
                if marker in letter["payload"] or letter["payload"] in _plain_payloads():
                    seen.setdefault(letter["reason"], letter)
    consumer.close()
    assert set(seen) == set(BAD_PAYLOADS), f"dead letters seen: {sorted(seen)}"
    assert seen["missing_field"]["detail"] == "missing field item_id"
    assert seen["wrong_type"]["detail"].startswith("ts ")
    # the job kept running and learnt from the good event after the bad ones
    running_job.wait_for(lambda: _features(running_job, user).get("n_events") == 1)


def _plain_payloads() -> set[str]:
    return {p.decode() for p in BAD_PAYLOADS.values() if b'"u"' not in p}


def test_prometheus_scrapes_job_and_flink_metrics(running_job) -> None:  # type: ignore[no-untyped-def]
    port = running_job.prometheus_port

    def scraped(query: str) -> bool:
        return bool(query_prometheus(port, query))

    running_job.wait_for(lambda: scraped('up{job="flywheel"} == 1'), timeout_s=60)
    running_job.wait_for(lambda: scraped('up{job="flink"} == 1'), timeout_s=60)
    running_job.wait_for(
        lambda: scraped('sum(flywheel_job_events_total{outcome="accepted"}) > 0'), timeout_s=60
    )
    running_job.wait_for(lambda: scraped("flywheel_job_freshness_seconds_count > 0"), 60)
    running_job.wait_for(lambda: scraped("flink_jobmanager_numRunningJobs >= 1"), timeout_s=60)
    running_job.wait_for(lambda: scraped("flink_taskmanager_job_task_operator_pendingRecords"), 60)


def test_users_are_pseudonymised_in_redis(running_job) -> None:  # type: ignore[no-untyped-def]
    user = f"private-{uuid.uuid4().hex[:6]}"
    with running_job.producer() as producer:
        producer.send(_event(user, "sku-9", "click"))
    pseudonym = pseudonymise(user, running_job.settings.hmac_key)
    running_job.wait_for(lambda: _features(running_job, user).get("n_events") == 1)
    keys = [
        k.decode() for k in running_job.redis.scan_iter(f"{running_job.settings.redis_prefix}:*")
    ]
    assert any(pseudonym in key for key in keys)
    assert not any(user in key for key in keys)


def test_forget_erases_the_user(running_job) -> None:  # type: ignore[no-untyped-def]
    user = f"leaving-{uuid.uuid4().hex[:6]}"
    reader = ListReader(running_job.settings, running_job.redis)
    with running_job.producer() as producer:
        for i in range(4):
            producer.send(_event(user, f"sku-{i}", "purchase"))
    running_job.wait_for(lambda: (_features(running_job, user).get("n_events") or 0) == 4)
    assert reader.get(user) is not None
    with running_job.producer() as producer:
        producer.send(_event(user, "-", "forget"))
    running_job.wait_for(lambda: reader.get(user) is None and not _features(running_job, user))
    with running_job.producer() as producer:  # state is gone too: the user starts afresh
        producer.send(_event(user, "sku-9", "view"))
    running_job.wait_for(lambda: _features(running_job, user).get("n_events") == 1)
    assert _features(running_job, user)["totals"] == {"view": 1}
