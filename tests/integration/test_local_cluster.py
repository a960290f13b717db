"""The job on a standalone cluster of two TaskManagers (``deploy.local_cluster``): each
TaskManager runs its own interpreter, users' lists land in Redis, and each TaskManager serves
Flywheel's metrics on its own port of the span."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from connectors.producer import EventProducer
from connectors.redis_lists import ListReader
from deploy.local_cluster import LocalCluster, TaskManagerMemory, free_port_run
from deploy.local_stack import create_topics
from tests.conftest import job_settings

pytestmark = pytest.mark.integration

_SMALL = TaskManagerMemory(task_heap_mb=384, task_off_heap_mb=256, jobmanager_mb=768)


def _accepted(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "flywheel_job_events_total" and sample.labels["outcome"] == "accepted"
    )


def test_two_taskmanagers_write_lists_and_each_serves_metrics(
    broker: str, redis_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = job_settings(broker, redis_url, tag, tmp_path, parallelism=2).with_overrides(
        metrics_port=free_port_run(2), metrics_port_span=2
    )
    create_topics(broker, [settings.events_topic], 2)
    create_topics(broker, [settings.dlq_topic, settings.item_sync_topic], 1)
    users = [f"c{tag}-{k}" for k in range(16)]
    client = redis.Redis.from_url(redis_url)
    reader = ListReader(settings, client)
    with LocalCluster(settings, tmp_path, taskmanagers=2, memory=_SMALL) as cluster:
        cluster.submit()
        started = cluster.process_groups()
        assert set(started) == {"jobmanager", "taskmanager-1", "taskmanager-2"}
        with EventProducer(settings) as producer:
            for k, user in enumerate(users * 4):  # 4 events each: past the cold start
                producer.send({
                    "event_id": uuid.uuid4().hex, "user_id": user, "item_id": f"i{k % 7}",
                    "action": "click", "category": "tea", "ts": int(time.time() * 1000),
                })  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            cluster.check()
            lists = [reader.get(user) for user in users]
            if all(found is not None and found.strategy == "online_mf" for found in lists):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"lists missing: {lists}; logs under {tmp_path / 'logs'}")
        per_taskmanager = [_accepted(url) for url in cluster.metrics_urls]
        assert sum(per_taskmanager) == len(users) * 4
        assert all(count > 0 for count in per_taskmanager), per_taskmanager
    assert not [name for name, pid in started.items() if Path(f"/proc/{pid}").exists()]
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()
