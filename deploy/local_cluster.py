"""A standalone Flink cluster on this host: one JobManager and N TaskManagers with one slot
each, from the Flink distribution inside the ``apache-flink`` wheel.

Unlike the local mini-cluster (one JVM, so one embedded Python interpreter shared by every
subtask in thread mode), each TaskManager is its own JVM with its own interpreter: at
parallelism N on N TaskManagers the Python operators run truly in parallel.

What it keeps, all under the run's work directory (nothing in the wheel is changed):

- ``flink-conf/``: a generated ``config.yaml`` (free REST, RPC and blob ports, a port range
  for Flink's Prometheus reporter, one slot per TaskManager, thread mode with this venv's
  interpreter, checkpoint storage) and the wheel's logging files;
- ``flink-lib/``: links to the wheel's ``lib/`` jars plus ``opt/flink-python``, so the
  TaskManagers load PyFlink's runtime from their own class path, as a PyFlink image does;
- ``logs/flink-cluster/``: each process's log and console output.

Each process is started in the foreground (``jobmanager.sh start-foreground``, which execs
the JVM) in its own session, with Linux's parent-death signal: :meth:`LocalCluster.stop`
(also on exit from the ``with`` block, on error or Ctrl-C) cancels the job, then SIGTERMs and
SIGKILLs each process group, so nothing outlives the caller. The job itself is submitted with
``flink run --detached --python flink_jobs/job.py`` and the settings as ``FLYWHEEL_*``
variables; its Python operators serve Flywheel's metrics on ``metrics_port`` ..
``metrics_port + taskmanagers - 1`` (``FLYWHEEL_METRICS_PORT_SPAN``), one per TaskManager.

Usage::

    python -m deploy.local_cluster --taskmanagers 2   # broker, Redis and the job; Ctrl-C stops
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.job_process import settings_env
from deploy.local_stack import HOST, die_with_parent_hook, free_port
from flywheel.settings import Settings

__all__ = ["ClusterError", "LocalCluster", "TaskManagerMemory", "free_port_run"]

_ROOT = Path(__file__).resolve().parent.parent
_JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


class ClusterError(RuntimeError):
    """The cluster or the job on it did not start (the message holds a log tail)."""


@dataclass(frozen=True)
class TaskManagerMemory:
    """Memory of one TaskManager (one slot). The defaults cover the pipeline benchmark's
    workload (100k items, 20k users, parallelism 2: ``deploy.sizing`` asks 837 MiB task heap
    and 319 MiB task off-heap) with room to spare."""

    task_heap_mb: int = 1024
    task_off_heap_mb: int = 512
    managed_mb: int = 128
    jobmanager_mb: int = 1024


def free_port_run(length: int, attempts: int = 100) -> int:
    """First of ``length`` consecutive TCP ports on 127.0.0.1 that were free a moment ago."""
    for _ in range(attempts):
        first = free_port()
        if first + length > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + length):
                    sock = held.enter_context(socket.socket())
                    sock.bind((HOST, port))
            except OSError:
                continue
        return first
    raise ClusterError(f"no {length} consecutive free ports found")


def _flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class LocalCluster:
    """A standalone cluster of ``taskmanagers`` one-slot TaskManagers for ``settings``' job.

    ``settings.parallelism`` should equal ``taskmanagers`` (the job needs one slot per
    subtask); ``settings.metrics_port_span`` must be at least ``taskmanagers``.
    """

    settings: Settings
    work: Path
    taskmanagers: int = 2
    memory: TaskManagerMemory = field(default_factory=TaskManagerMemory)
    rest_port: int = 0
    flink_metrics_ports: tuple[int, int] = (0, 0)
    job_id: str | None = None
    _processes: list[_Process] = field(default_factory=list)

    # --- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        """Write the configuration, start the JobManager and the TaskManagers, and wait until
        every TaskManager has registered its slot."""
        if self.settings.metrics_port and self.settings.metrics_port_span < self.taskmanagers:
            raise ClusterError(
                f"FLYWHEEL_METRICS_PORT_SPAN is {self.settings.metrics_port_span}: each of the "
                f"{self.taskmanagers} TaskManagers needs its own metrics port"
            )
        self._write_config()
        self._spawn("jobmanager", "jobmanager.sh")
        self._wait(lambda: self._rest("/overview") is not None, timeout_s, "the JobManager")
        for k in range(self.taskmanagers):
            self._spawn(f"taskmanager-{k + 1}", "taskmanager.sh")
        self._wait(
            lambda: (self._rest("/overview") or {}).get("slots-total", 0) >= self.taskmanagers,
            timeout_s,
            f"{self.taskmanagers} TaskManagers",
        )
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        """Cancel the job (if any), then stop every process (TaskManagers first); idempotent."""
        if self.job_id is not None and self.running:
            with contextlib.suppress(OSError):
                self.cancel()
        for process in reversed(self._processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in reversed(self._processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
        self._processes.clear()

    @property
    def running(self) -> bool:
        """Every started process is alive."""
        return bool(self._processes) and all(p.popen.poll() is None for p in self._processes)

    def process_groups(self) -> dict[str, int]:
        """Process (and process group) id of each cluster process, by name (``jobmanager``,
        ``taskmanager-1``, ...): the JVMs, whose threads include the embedded interpreters."""
        return {p.name: p.popen.pid for p in self._processes if p.popen.poll() is None}

    @property
    def metrics_urls(self) -> list[str]:
        """Flywheel metrics endpoints of the TaskManagers (one port each)."""
        first = self.settings.metrics_port
        return [f"http://{HOST}:{p}/metrics" for p in range(first, first + self.taskmanagers)]

    @property
    def flink_metrics_urls(self) -> list[str]:
        """Flink reporter endpoints (the JobManager's and each TaskManager's)."""
        first, last = self.flink_metrics_ports
        return [f"http://{HOST}:{p}/metrics" for p in range(first, last + 1)] if first else []

    # --- the job -------------------------------------------------------------------------
    def submit(self, timeout_s: float = 180.0) -> str:
        """Submit the job (``flink run --detached --python``) and wait until all its tasks
        run; returns its id."""
        env = {
            **os.environ,
            **settings_env(self.settings),
            **self._flink_env(),
            "PYTHONPATH": self._pythonpath(),
            "PYFLINK_CLIENT_EXECUTABLE": sys.executable,
        }
        command = [
            str(_flink_home() / "bin" / "flink"),
            "run",
            "--detached",
            "--jobmanager",
            f"{HOST}:{self.rest_port}",
            "--python",
            str(_ROOT / "flink_jobs" / "job.py"),
        ]
        log_path = self._log_dir / "submit.log"
        client = _start_process(command, env, log_path)
        try:
            status = client.wait(timeout=timeout_s)
        finally:  # the client (a JVM and its Python driver) never outlives the submission
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        text = log_path.read_text(errors="replace")
        found = _JOB_ID.search(text)
        if status != 0 or found is None:
            raise ClusterError(f"flink run failed ({status}); {log_path}:\n{text[-3000:]}")
        self.job_id = found.group(1)
        self._wait(self._all_tasks_running, timeout_s, f"job {self.job_id} to run")
        return self.job_id

    def job_state(self) -> str:
        """State of the submitted job (``RUNNING``, ``FAILED``, ...), ``""`` when unknown."""
        if self.job_id is None:
            return ""
        return str((self._rest(f"/jobs/{self.job_id}") or {}).get("state", ""))

    def cancel(self, timeout_s: float = 30.0) -> None:
        """Cancel the submitted job and wait until it is no longer running."""
        if self.job_id is None:
            return
        request = urllib.request.Request(
            f"http://{HOST}:{self.rest_port}/jobs/{self.job_id}?mode=cancel", method="PATCH"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        with contextlib.suppress(ClusterError):
            self._wait(lambda: self.job_state() not in ("RUNNING", "CANCELLING"), timeout_s, "")

    def check(self) -> None:
        """Raise :class:`ClusterError` (with a log tail) when a process exited or the job
        is no longer running."""
        for process in self._processes:
            if process.popen.poll() is not None:
                raise ClusterError(f"{process.name} exited; {self._tail(process.log_path)}")
        state = self.job_state() if self.job_id else "RUNNING"
        if state not in ("RUNNING", ""):
            raise ClusterError(f"job {self.job_id} is {state}; {self._exception()}")

    # --- internals -----------------------------------------------------------------------
    @property
    def _conf_dir(self) -> Path:
        return self.work / "flink-conf"

    @property
    def _log_dir(self) -> Path:
        return self.work / "logs" / "flink-cluster"

    def _config(self) -> dict[str, Any]:
        """The cluster's ``config.yaml`` as flat keys (the wheel's JVM options kept)."""
        defaults = yaml.safe_load((_flink_home() / "conf" / "config.yaml").read_text()) or {}
        first = free_port_run(self.taskmanagers + 1)
        self.flink_metrics_ports = (first, first + self.taskmanagers)
        self.rest_port = free_port()
        mem, s, python = self.memory, self.settings, sys.executable
        conf: dict[str, Any] = {
            "env.java.opts.all": _flatten(defaults).get("env.java.opts.all", ""),
            "env.pid.dir": str(self.work / "flink-pids"),
            "jobmanager.rpc.address": HOST, "jobmanager.bind-host": HOST,
            "jobmanager.rpc.port": free_port(), "blob.server.port": str(free_port()),
            "rest.address": HOST, "rest.bind-address": HOST, "rest.port": self.rest_port,
            "taskmanager.host": HOST, "taskmanager.bind-host": HOST,
            "taskmanager.numberOfTaskSlots": 1,
            "taskmanager.memory.task.heap.size": f"{mem.task_heap_mb}m",
            "taskmanager.memory.task.off-heap.size": f"{mem.task_off_heap_mb}m",
            "taskmanager.memory.managed.size": f"{mem.managed_mb}m",
            "jobmanager.memory.process.size": f"{mem.jobmanager_mb}m",
            "jobmanager.execution.failover-strategy": "region",
            "parallelism.default": s.parallelism,
            "python.execution-mode": s.execution_mode,
            "python.executable": python, "python.client.executable": python,
            "python.state.cache-size": 200000,
            "metrics.reporter.prom.factory.class":
                "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
            "metrics.reporter.prom.port": f"{first}-{first + self.taskmanagers}",
        }  # fmt: skip
        if s.checkpoint_interval_ms:
            conf.update({
                "execution.checkpointing.interval": f"{s.checkpoint_interval_ms} ms",
                "execution.checkpointing.dir": Path(s.checkpoint_dir).resolve().as_uri(),
                "execution.checkpointing.externalized-checkpoint-retention":
                    "RETAIN_ON_CANCELLATION",
                "execution.checkpointing.num-retained": 3,
            })  # fmt: skip
        if s.restore_from:
            conf["execution.state-recovery.path"] = s.restore_from
        return conf

    def _write_config(self) -> None:
        home = _flink_home()
        self._conf_dir.mkdir(parents=True, exist_ok=True)
        for source in (home / "conf").iterdir():
            if source.name != "config.yaml" and source.is_file():
                (self._conf_dir / source.name).write_bytes(source.read_bytes())
        conf = self._config()
        (self._conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=True))
        lib = self.work / "flink-lib"
        lib.mkdir(parents=True, exist_ok=True)
        for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python*.jar")]:
            link = lib / jar.name
            if not link.exists():
                link.symlink_to(jar)
        (self.work / "flink-pids").mkdir(parents=True, exist_ok=True)
        self._log_dir.mkdir(parents=True, exist_ok=True)

    def _flink_env(self) -> dict[str, str]:
        return {
            "FLINK_CONF_DIR": str(self._conf_dir),
            "FLINK_LIB_DIR": str(self.work / "flink-lib"),
            "FLINK_LOG_DIR": str(self._log_dir),
        }

    def _pythonpath(self) -> str:
        """Our packages and the venv's site-packages, for the embedded interpreters."""
        site = _flink_home().parent
        extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        return os.pathsep.join(dict.fromkeys(p for p in (str(_ROOT), str(site), *extra) if p))

    def _spawn(self, name: str, script: str) -> None:
        env = {
            **os.environ,
            **self._flink_env(),
            "PYTHONPATH": self._pythonpath(),
            "FLINK_IDENT_STRING": name,
        }
        log_path = self._log_dir / f"{name}.out"
        command = [str(_flink_home() / "bin" / script), "start-foreground"]
        popen = _start_process(command, env, log_path)
        self._processes.append(_Process(name, popen, log_path))

    def _rest(self, path: str) -> dict[str, Any] | None:
        try:
            url = f"http://{HOST}:{self.rest_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return dict(json.loads(reply.read()))
        except (OSError, ValueError):
            return None

    def _all_tasks_running(self) -> bool:
        job = self._rest(f"/jobs/{self.job_id}") or {}
        if job.get("state") in ("FAILED", "CANCELED", "FINISHED"):
            raise ClusterError(f"job {self.job_id} is {job['state']}; {self._exception()}")
        vertices = job.get("vertices") or []
        return bool(vertices) and all(v.get("status") == "RUNNING" for v in vertices)

    def _exception(self) -> str:
        info = self._rest(f"/jobs/{self.job_id}/exceptions") or {}
        history = (info.get("exceptionHistory") or {}).get("entries") or []
        return str(history[0].get("stacktrace", ""))[-3000:] if history else "(no exception)"

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.popen.poll() is not None:
                    raise ClusterError(f"{process.name} exited; {self._tail(process.log_path)}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    @staticmethod
    def _tail(path: Path, chars: int = 3000) -> str:
        try:
            return f"{path}:\n{path.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"{path}: (no log)"


def _demo(argv: list[str] | None = None) -> int:
    """Broker, Redis and the job on a cluster, until Ctrl-C."""
    from deploy.local_stack import create_topics, start_broker, start_redis
    from flywheel.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m deploy.local_cluster", description=__doc__)
    parser.add_argument("--taskmanagers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("var/cluster"))
    args = parser.parse_args(argv)
    n, work = args.taskmanagers, args.work.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as stack:
        broker = start_broker(free_port(), work / "logs")
        stack.callback(broker.stop)
        redis_service = start_redis(free_port(), work / "logs")
        stack.callback(redis_service.stop)
        settings = load_settings(
            kafka_bootstrap=broker.address, redis_url=f"redis://{redis_service.address}/0",
            parallelism=n, metrics_port=free_port_run(n), metrics_port_span=n,
            checkpoint_dir=work / "checkpoints", var_dir=work,
        )  # fmt: skip
        create_topics(broker.address, [settings.events_topic], n)
        create_topics(broker.address, [settings.dlq_topic, settings.item_sync_topic], 1)
        cluster = stack.enter_context(LocalCluster(settings, work, taskmanagers=n))
        job = cluster.submit()
        print(f"job {job} on {n} TaskManagers; web UI http://{HOST}:{cluster.rest_port}")
        print(f"broker {broker.address}, {settings.redis_url}; metrics {cluster.metrics_urls}")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                cluster.check()
                time.sleep(2)
    return 0


def _start_process(
    command: list[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` from the project root in its own session (so its whole process group
    can be signalled), output into ``log_path``, and killed if this process dies."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent_hook(),
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(_demo())
