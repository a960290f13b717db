"""The job under benchmark, seen from outside: its processes and metrics endpoints.

:func:`running_job` starts a Tansu broker, a Redis and the job, each on a free port, with logs
under the run's work directory, and stops them all on exit, error or Ctrl-C (newest first).
The job runs in a local mini-cluster (:class:`~deploy.job_process.JobProcess`, one JVM and
so one embedded Python interpreter) or on a standalone cluster of one-slot TaskManagers
(:class:`~deploy.local_cluster.LocalCluster`, one JVM and interpreter each), whose metrics
endpoints (one per TaskManager) are scraped and summed. Holds no state beyond the handles.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import Scrape, say
from deploy.job_process import JobProcess
from deploy.local_cluster import LocalCluster, free_port_run
from deploy.local_stack import create_topics, free_port, start_broker, start_redis
from flywheel.settings import Settings, load_settings
from serving.process_stats import process_stat, thread_cpu

__all__ = ["ACCEPTED", "FRESHNESS", "PipelineJob", "running_job"]

ACCEPTED = "flywheel_job_events_total"
FRESHNESS = "flywheel_job_freshness_seconds"

_FIXED: dict[str, object] = {
    "events_topic": "bench-events", "dlq_topic": "bench-events.dlq",
    "item_sync_topic": "bench-items", "consumer_group": "bench", "redis_prefix": "bench",
    "n_factors": 32, "parallelism": 1, "checkpoint_interval_ms": 10_000,
}  # fmt: skip


class PipelineJob:
    """The running job seen from outside: its processes and its metrics endpoints (one for
    the local mini-cluster; one per TaskManager on a standalone cluster, summed)."""

    def __init__(
        self,
        settings: Settings,
        urls: Sequence[str],
        groups: Callable[[], dict[str, int]],
        check: Callable[[], None],
        services: Mapping[str, int] | None = None,
        flink_ports: Sequence[int] = (),
    ):
        self.settings = settings
        self.urls = list(urls)
        self.groups = groups  # name -> process group of the job's processes
        self.check_alive = check  # raises when the job died
        self.services = dict(services or {})  # name -> pid of the broker, Redis, ...
        self.flink_ports = list(flink_ports) or [settings.flink_metrics_port]

    def scrape(self) -> Scrape:
        return Scrape.merged([Scrape.fetch(url) for url in self.urls])

    def accepted(self) -> float:
        return self.scrape().total(ACCEPTED, outcome="accepted")

    def accepted_by_endpoint(self) -> list[float]:
        return [Scrape.fetch(u).total(ACCEPTED, outcome="accepted") for u in self.urls]

    def items(self) -> float:
        """Rows of the item table: the largest of the endpoints (each holds the whole table)."""
        return max(Scrape.fetch(url).total("flywheel_job_items") for url in self.urls)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the job's processes so far: the PyFlink client, the
        JVMs with their embedded interpreters, any Python worker processes."""
        return sum(seconds for _, _, seconds in self._processes())

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of each of the job's process groups, and of each service."""
        totals = dict.fromkeys(self.groups(), 0.0)
        for name, _, seconds in self._processes():
            totals[name] += seconds
        for name, pid in self.services.items():
            stat = process_stat(pid)
            totals[name] = stat[1] if stat else 0.0
        return totals

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far by thread name, summed over the job's processes: Flink names a
        task's thread after its operator chain (e.g. ``users -> Sink: ...``), and in thread
        mode each Python operator runs in its task's thread."""
        totals: dict[str, float] = {}
        for _, pid, _ in self._processes():
            for name, seconds in thread_cpu(pid).items():
                totals[name] = totals.get(name, 0.0) + seconds
        return totals

    def _processes(self) -> list[tuple[str, int, float]]:
        """``(group name, pid, CPU seconds)`` of each live process in the job's groups."""
        names = {group: name for name, group in self.groups().items()}
        found = []
        for entry in Path("/proc").iterdir():
            stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
            if stat is not None and stat[0] in names:  # None: not a process, or it ended
                found.append((names[stat[0]], int(entry.name), stat[1]))
        return found

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        """Wait until the job's operators are open (its metrics endpoint answers)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.scrape()  # every endpoint answers
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"job metrics not served after {timeout_s:.0f} s")

    def settle(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Wait until no event is accepted and no list written for ``quiet_s``."""
        deadline, last = time.monotonic() + timeout_s, (-1.0, -1.0)
        while time.monotonic() < deadline:
            scrape = self.scrape()
            now = (scrape.total(ACCEPTED, outcome="accepted"), scrape.total(f"{FRESHNESS}_count"))
            if now == last:
                return
            last = now
            time.sleep(quiet_s)

    def wait_accepted(self, target: float, timeout_s: float, what: str) -> bool:
        """Wait until ``target`` events were accepted; False on timeout."""
        deadline, last_print = time.monotonic() + timeout_s, 0.0
        while time.monotonic() < deadline:
            self.check_alive()
            done = self.accepted()
            if done >= target:
                return True
            if time.monotonic() - last_print >= 5:
                say(f"{what}: waiting, {done:,.0f} / {target:,.0f} accepted")
                last_print = time.monotonic()
            time.sleep(0.5)
        return False


@contextmanager
def running_job(
    work: Path, overrides: Mapping[str, object], taskmanagers: int = 0
) -> Iterator[PipelineJob]:
    """Broker, Redis and the job for one run; all stopped on exit (newest first). The job runs
    in a local mini-cluster (``taskmanagers`` 0) or on a standalone cluster of that many
    one-slot TaskManagers at parallelism ``taskmanagers``."""
    logs = work / "logs"
    with ExitStack() as stack:
        broker = start_broker(free_port(), logs)
        stack.callback(broker.stop)
        redis_service = start_redis(free_port(), logs)
        stack.callback(redis_service.stop)
        cluster_only = {
            "parallelism": taskmanagers, "metrics_port": free_port_run(taskmanagers),
            "metrics_port_span": taskmanagers,
        } if taskmanagers else {}  # fmt: skip
        settings = load_settings(**{
            **_FIXED,
            "kafka_bootstrap": broker.address,
            "redis_url": f"redis://{redis_service.address}/0",
            "checkpoint_dir": work / "checkpoints",
            "var_dir": work,
            "metrics_port": free_port(),
            "flink_metrics_port": free_port(),
            **overrides,
            **cluster_only,
        })  # fmt: skip
        create_topics(broker.address, [settings.events_topic], settings.parallelism)
        create_topics(broker.address, [settings.dlq_topic, settings.item_sync_topic], 1)
        stack.callback(shutil.rmtree, work / "checkpoints", ignore_errors=True)  # after stop
        services = {
            "broker": broker.process.pid, "redis": redis_service.process.pid,
            "bench": os.getpid(),  # the producer and the scrapes
        }  # fmt: skip
        if taskmanagers:
            job = _cluster_job(stack, settings, work, taskmanagers, services)
        else:
            job = _local_job(stack, settings, logs, services)
        job.wait_ready()
        yield job


def _local_job(
    stack: ExitStack, settings: Settings, logs: Path, services: dict[str, int]
) -> PipelineJob:
    """The job in a local mini-cluster (:class:`~deploy.job_process.JobProcess`)."""
    process = JobProcess(settings, logs / "job.log")
    stack.callback(process.stop)
    say(f"starting the job (log {process.log_path})")
    process.start()

    def check() -> None:
        if not process.running:
            tail = process.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the job exited; log {process.log_path}:\n{tail}")

    popen = process.process
    groups = {"job": popen.pid} if popen is not None else {}  # own session: pid = group
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    return PipelineJob(settings, [url], lambda: groups, check, services)


def _cluster_job(
    stack: ExitStack, settings: Settings, work: Path, taskmanagers: int, services: dict[str, int]
) -> PipelineJob:
    """The job on a standalone cluster (:class:`~deploy.local_cluster.LocalCluster`)."""
    say(f"starting a standalone cluster of {taskmanagers} TaskManagers (logs {work / 'logs'})")
    cluster = stack.enter_context(LocalCluster(settings, work, taskmanagers=taskmanagers))
    cluster.submit()
    first, last = cluster.flink_metrics_ports
    return PipelineJob(
        settings, cluster.metrics_urls, cluster.process_groups, cluster.check, services,
        flink_ports=range(first, last + 1),
    )  # fmt: skip
