"""Session fixtures: the real broker and Redis of the local stack, on free ports.

A service that cannot start fails the tests that need it (never a skip): the error names the
service and shows the tail of its log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from connectors.producer import EventProducer
from deploy.job_process import JobProcess
from deploy.local_stack import (
    create_topics,
    free_port,
    start_broker,
    start_prometheus,
    start_redis,
)
from flywheel.settings import Settings, load_settings


@pytest.fixture(scope="session")
def stack_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the session services' log files."""
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
def broker(stack_log_dir: Path) -> Iterator[str]:
    """Bootstrap string (``127.0.0.1:PORT``) of a Tansu broker living for the session."""
    service = start_broker(free_port(), stack_log_dir)
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_url(stack_log_dir: Path) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throw-away Redis living for the session."""
    service = start_redis(free_port(), stack_log_dir)
    try:
        yield f"redis://{service.address}/0"
    finally:
        service.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names and Redis key prefixes."""
    return uuid.uuid4().hex[:10]


@dataclass
class RunningJob:
    """A streaming job running for the session, with its own topics and key prefix."""

    settings: Settings
    process: JobProcess
    prometheus_port: int
    redis: redis.Redis

    def producer(self) -> EventProducer:
        return EventProducer(self.settings)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
        """Poll ``predicate`` until it holds; fail with the job log's tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.process.running:
                break
            time.sleep(0.2)
        tail = self.process.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"condition not met within {timeout_s}s; job log tail:\n{tail}")


def api_settings(broker: str, redis_url: str, prefix: str) -> Settings:
    """Settings of an API under test: new unique topics (created here), a key prefix starting
    with ``prefix``, and a metrics port no job listens on."""
    tag = uuid.uuid4().hex[:10]
    topics = [f"events-{tag}", f"events-{tag}.dlq", f"items-{tag}"]
    create_topics(broker, topics)
    return load_settings(
        kafka_bootstrap=broker,
        redis_url=redis_url,
        events_topic=topics[0],
        dlq_topic=topics[1],
        item_sync_topic=topics[2],
        redis_prefix=f"{prefix}{tag}",
        metrics_port=free_port(),
    )


def job_settings(broker: str, redis_url: str, tag: str, var: Path, **overrides: object) -> Settings:
    """Settings of a test job: unique topics, group, key prefix and checkpoint dir."""
    return load_settings(
        kafka_bootstrap=broker,
        redis_url=redis_url,
        events_topic=f"events-{tag}",
        dlq_topic=f"events-{tag}.dlq",
        item_sync_topic=f"items-{tag}",
        consumer_group=f"flywheel-{tag}",
        redis_prefix=f"t{tag}",
        checkpoint_dir=var / "checkpoints",
        var_dir=var,
        metrics_port=free_port(),
        flink_metrics_port=free_port(),
        checkpoint_interval_ms=2000,
        **overrides,
    )


LIVE_EXPERIMENT = "live-ab:ab:online_mf=50,trending=50:home,cart"
"""The experiment the session job counts (``FLYWHEEL_EXPERIMENT`` of the job only: the APIs
other tests build from ``running_job.settings`` run none, so their lists are unchanged; the
experiment tests serve an API with ``running_job.settings.with_overrides(experiment=...)``)."""


@pytest.fixture(scope="session")
def running_job(
    broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningJob]:
    """One job for the session (tests share it: each uses its own users), scraped by a real
    Prometheus server that scrapes both the job's own metrics and Flink's reporter. Lists
    come from the clustered index (the path large catalogues take), so the live tests run it
    inside Flink; on these small catalogues its candidates cover every item."""
    tag = uuid.uuid4().hex[:8]
    var = tmp_path_factory.mktemp("job")
    settings = job_settings(broker, redis_url, tag, var, topn_index="clustered")
    create_topics(broker, [settings.events_topic, settings.dlq_topic, settings.item_sync_topic])
    job_side = settings.with_overrides(experiment=LIVE_EXPERIMENT)
    job = JobProcess(job_side, var / "job.log").start()
    targets = {
        "flywheel": [f"127.0.0.1:{settings.metrics_port}"],
        "flink": [f"127.0.0.1:{settings.flink_metrics_port}"],
    }
    prometheus_port = free_port()
    prometheus = start_prometheus(prometheus_port, var / "prometheus", targets, log_dir=var)
    client = redis.Redis.from_url(redis_url)
    try:
        yield RunningJob(settings, job, prometheus_port, client)
    finally:
        job.stop()
        prometheus.stop()
        for key in client.scan_iter(f"{settings.redis_prefix}:*"):
            client.delete(key)
        client.close()
