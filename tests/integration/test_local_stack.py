"""The embedded stack's real services: broker, Redis, Prometheus and their lifecycle."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, start_http_server

from deploy.local_stack import (
    LocalStack,
    ServiceError,
    create_topics,
    free_port,
    query_prometheus,
    start_prometheus,
    start_redis,
)
from flywheel.settings import Settings, load_settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def target_up(prometheus_port: int, job: str) -> bool:
    result = query_prometheus(prometheus_port, f'up{{job="{job}"}}')
    return bool(result) and result[0]["value"][1] == "1"


def test_broker_round_trips_1000_messages(broker: str, unique: str) -> None:
    topic = f"roundtrip-{unique}"
    create_topics(broker, [topic])
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
    for i in range(1000):
        producer.send(topic, key=str(i % 7).encode(), value=f"message-{i}".encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < 1000 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(record.value for record in records)
    consumer.close()
    assert values == [f"message-{i}".encode() for i in range(1000)]


def test_create_topics_is_idempotent(broker: str, unique: str) -> None:
    names = [f"idem-a-{unique}", f"idem-b-{unique}"]
    create_topics(broker, names[:1], partitions=3)
    create_topics(broker, names, partitions=3)
    create_topics(broker, names, partitions=3)
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        described = {t["name"]: t for t in admin.describe_topics(names)}
    finally:
        admin.close()
    assert sorted(described) == sorted(names)
    assert all(len(t["partitions"]) == 3 for t in described.values())


def test_redis_set_get(redis_url: str, unique: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"test:{unique}:"
    try:
        client.set(f"{prefix}greeting", "hello")
        client.rpush(f"{prefix}list", "a", "b")
        assert client.get(f"{prefix}greeting") == b"hello"
        assert client.lrange(f"{prefix}list", 0, -1) == [b"a", b"b"]
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        assert not list(client.scan_iter(match=f"{prefix}*"))
        client.close()


def test_prometheus_scrapes_a_target(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    Counter("flywheel_test_events", "test counter", registry=registry).inc(3)
    target_port = free_port()
    server, _thread = start_http_server(target_port, addr="127.0.0.1", registry=registry)
    prometheus = start_prometheus(free_port(), tmp_path, {"x": [f"127.0.0.1:{target_port}"]})
    try:
        wait_for(lambda: target_up(prometheus.port, "x"), 30, 'up{job="x"} == 1')
        wait_for(
            lambda: bool(query_prometheus(prometheus.port, "flywheel_test_events_total")),
            10,
            "the test counter",
        )
        value = query_prometheus(prometheus.port, "flywheel_test_events_total")[0]["value"][1]
        assert float(value) == 3.0
        with pytest.raises(ServiceError, match="failed"):
            query_prometheus(prometheus.port, "up{")
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
    assert prometheus.process.poll() is not None
    prometheus.stop()  # idempotent


def stack_settings(tmp_path: Path, parallelism: int = 1) -> Settings:
    """Settings whose ports are all free, with ``var_dir`` under ``tmp_path``."""
    return load_settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prometheus_port=free_port(),
        metrics_port=free_port(),
        flink_metrics_port=free_port(),
        var_dir=tmp_path / "var",
        parallelism=parallelism,
    )


def test_local_stack_starts_everything_and_leaves_nothing(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, parallelism=2)
    registry = CollectorRegistry()
    server, _ = start_http_server(settings.metrics_port, addr="127.0.0.1", registry=registry)
    try:
        with LocalStack(settings) as stack:
            pids = [service.process.pid for service in stack.services.values()]
            assert sorted(stack.services) == ["broker", "prometheus", "redis"]
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            topics = {t["name"]: t for t in admin.describe_topics()}
            admin.close()
            assert len(topics[settings.events_topic]["partitions"]) == 2
            assert len(topics[settings.dlq_topic]["partitions"]) == 1
            assert settings.item_sync_topic in topics
            assert redis.Redis.from_url(settings.redis_url).ping()
            wait_for(lambda: target_up(settings.prometheus_port, "flywheel"), 30, "flywheel up")
            assert (settings.var_dir / "logs" / "broker.log").exists()
    finally:
        server.shutdown()
        server.server_close()
    assert stack.services == {}
    assert not any(is_alive(pid) for pid in pids)


def test_local_stack_cleans_up_when_a_service_cannot_start(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path)
    with socket.socket() as squatter:  # occupy the Prometheus port: the last service to start
        squatter.bind(("127.0.0.1", settings.prometheus_port))
        squatter.listen()
        with pytest.raises(ServiceError, match=r"prometheus.*in use"):
            LocalStack(settings).start()
    assert not accepts_connections(int(settings.kafka_bootstrap.rpartition(":")[2]))
    assert not accepts_connections(urllib.parse.urlsplit(settings.redis_url).port or 0)


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from deploy.local_stack import start_redis\n"
        "service = start_redis(int(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(service.process.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(free_port()), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert is_alive(child)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not is_alive(child), 10, "redis to die with its parent")


def test_start_redis_fails_loudly_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(ServiceError, match="in use"):
            start_redis(squatter.getsockname()[1], tmp_path)
