"""The running job against the real broker, Redis, Flink mini-cluster and Prometheus:
events change lists, bad input is dead-lettered with its reason, duplicates are dropped, and
Prometheus scrapes both metric sources."""

from __future__ import annotations

import math
import time
import urllib.request
import uuid

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.redis_lists import ListReader, RecList
from deploy.local_stack import query_prometheus
from flywheel.events import REJECT_REASONS, pseudonymise

pytestmark = pytest.mark.integration


def _event(user: str, item: str, action: str = "click", **extra: object) -> dict[str, object]:
    base = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "action": action}
    return {**base, "ts": int(time.time() * 1000), **extra}


_NO_LIST = RecList("", "home", "none", 0, 0, [])


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
    "bad_item_list": orjson.dumps(_event("u", "i", action="impression", item_ids=[])),
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


def _quality(job) -> dict[tuple[str, ...], float]:  # type: ignore[no-untyped-def]
    """The job's live-quality samples, ``(name, strategy[, split]) -> value``."""
    url = f"http://127.0.0.1:{job.settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("flywheel_job_quality_"):
                labels = sample.labels
                key = (sample.name, labels["strategy"], *filter(None, [labels.get("split")]))
                values[key] = sample.value
    return values


def _settled_quality(job) -> dict[tuple[str, ...], float]:  # type: ignore[no-untyped-def]
    """The quality counters once two reads half a second apart agree (exports are done)."""
    reads = [_quality(job)]

    def settled() -> bool:
        time.sleep(0.5)
        reads.append(_quality(job))
        return reads[-1] == reads[-2]

    job.wait_for(settled, timeout_s=60)
    return reads[-1]


def test_live_quality_tests_events_against_the_written_list(running_job) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    user, newcomer = f"judged-{tag}", f"newcomer-{tag}"
    reader = ListReader(running_job.settings, running_job.redis)
    now = int(time.time() * 1000)
    warm = [(f"q-bought-{tag}-{i}", "purchase") for i in range(3)]
    warm += [(f"q-seen-{tag}-{i}", "view") for i in range(4)]  # not purchased: can be listed
    with running_job.producer() as producer:
        for i, (item, action) in enumerate(warm):
            producer.send(_event(user, item, action, ts=now + i))
    last_ts = now + len(warm) - 1
    running_job.wait_for(lambda: (reader.get(user) or _NO_LIST).event_ts == last_ts)
    written = reader.get(user)
    assert written is not None and written.strategy == "online_mf" and len(written.items) >= 2
    before = _settled_quality(running_job)

    # the item ranked 2nd in the list as written is a hit; a never-seen item cannot be
    hit_item = written.items[1][0]
    evaluated, hits = "flywheel_job_quality_evaluated_total", "flywheel_job_quality_hits_total"
    ndcg = "flywheel_job_quality_ndcg_sum_total"
    not_evaluated = "flywheel_job_quality_not_evaluated_total"
    with running_job.producer() as producer:
        producer.send(_event(user, hit_item, "click", ts=now + 10))
        producer.send(_event(user, f"q-never-{tag}", "click", ts=now + 11))
        producer.send(_event(newcomer, hit_item, "add_to_cart", ts=now + 12))  # no list yet

    def personal_counted() -> bool:
        counts = _quality(running_job)
        keys = [(evaluated, "online_mf", "repeat"), (evaluated, "online_mf", "first_time")]
        return sum(counts[k] - before[k] for k in keys) >= 2

    running_job.wait_for(personal_counted)
    after = _settled_quality(running_job)
    delta = {key: after[key] - before[key] for key in after}

    # the hit is a repeat when the model ranked one of the user's viewed items 2nd
    split = "repeat" if hit_item in {item for item, _ in warm} else "first_time"
    expected = {"repeat": [0, 0, 0.0], "first_time": [1, 0, 0.0]}  # the never-seen item
    expected[split][0] += 1
    expected[split][1] += 1
    expected[split][2] += 1 / math.log2(3)
    for name, (n, n_hits, ndcg_sum) in expected.items():
        assert delta[(evaluated, "online_mf", name)] == n, name
        assert delta[(hits, "online_mf", name)] == n_hits, name
        assert delta[(ndcg, "online_mf", name)] == pytest.approx(ndcg_sum), name
    assert delta[(not_evaluated, "online_mf")] == 1  # the newcomer has no list to test
    # trending meets every event: evaluated (or, while trending is empty, not evaluated)
    popularity = sum(delta[(evaluated, "popularity", s)] for s in ("repeat", "first_time", "cold"))
    assert popularity + delta[(not_evaluated, "popularity")] == 3
    # the never-seen item is not trending, so only a first-time hit item could hit there
    assert delta[(hits, "popularity", "first_time")] <= (split == "first_time")
    assert 0 < after[("flywheel_job_quality_coverage_ratio", "online_mf")] <= 1

    port = running_job.prometheus_port
    split_hits = after[(hits, "online_mf", split)]
    k = running_job.settings.quality_k
    query = f'{hits}{{strategy="online_mf",split="{split}",k="{k}"}} >= {split_hits}'
    running_job.wait_for(lambda: bool(query_prometheus(port, query)), timeout_s=60)
