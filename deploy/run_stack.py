"""``flywheel run`` (``make run``): the embedded stack, the job and demo traffic, with a status.

Starts :class:`~deploy.local_stack.LocalStack` and the job in a child process; once the job
serves metrics, a thread feeds demo traffic. Every second a status line (accepted events/s,
dead letters, freshness quantiles, lists written) is computed from the job's ``/metrics``; every
few seconds a shopper's list is read back from Redis. Ctrl-C, SIGTERM or SIGHUP stops the
traffic, the job and the stack, in that order; a job dying on its own ends the run with its
log's tail and status 1. Memory is constant: only the last 2,000 user ids sent are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from connectors.producer import EventProducer
from connectors.redis_lists import ListReader
from connectors.replay import TokenBucket
from deploy.job_process import JobProcess
from deploy.local_stack import HOST, LocalStack, ServiceError
from flywheel.settings import Settings

if TYPE_CHECKING:
    from connectors.simulator import Simulator, Visit

__all__ = ["JobSnapshot", "bucket_quantile", "main", "parse_snapshot"]

_STARTUP_TIMEOUT_S = 300.0  # until the first list; the mini-cluster needs ~15 s on an idle host
_MALFORMED_EVERY = 500  # one malformed payload per this many demo events (shows the DLQ path)
_SHOPPER_EVERY_S, _WINDOW = 5.0, 5  # status rates and quantiles cover the last ~5 s
_WARMUP_RATE = 5.0  # events/s until the first list: no backlog builds up while Flink warms up
_DEMO_USERS, _DEMO_ITEMS, _DEMO_EVENTS, _RECENT = 2_000, 5_000, 10**9, 2_000
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, terminal closed
_EXAMPLE_QUERY = "rate(flywheel_job_events_total[1m])"
_BAD = b'{"event_id": "demo-bad", "user_id": "u0", "item_id": "i0"'
_MALFORMED = (_BAD, b"[1, 2]", _BAD + b', "action": "teleport", "ts": 1}', _BAD + b"}")


@dataclass(frozen=True)
class JobSnapshot:
    """The job's counters at one scrape; ``freshness`` holds cumulative (le, count) buckets."""

    at: float
    accepted: float
    dead_letters: float
    lists_written: float
    freshness: tuple[tuple[float, float], ...]


def parse_snapshot(text: str, at: float) -> JobSnapshot:
    """Read the job's counters from a Prometheus text exposition.

    >>> text = '''flywheel_job_events_total{action="view",outcome="accepted"} 7.0
    ... flywheel_job_dead_letters_total{reason="malformed_json"} 1.0
    ... flywheel_job_lists_written_total{strategy="online_mf"} 5.0
    ... flywheel_job_freshness_seconds_bucket{le="+Inf"} 5.0
    ... flywheel_job_freshness_seconds_bucket{le="0.1"} 3.0
    ... '''
    >>> parse_snapshot(text, at=0.0)  # doctest: +NORMALIZE_WHITESPACE
    JobSnapshot(at=0.0, accepted=7.0, dead_letters=1.0, lists_written=5.0,
                freshness=((0.1, 3.0), (inf, 5.0)))
    """
    accepted = dead = lists = 0.0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "flywheel_job_events_total" and labels.get("outcome") == "accepted":
                accepted += value
            elif name == "flywheel_job_dead_letters_total":
                dead += value
            elif name == "flywheel_job_lists_written_total":
                lists += value
            elif name == "flywheel_job_freshness_seconds_bucket":
                buckets.append((float(labels["le"]), value))
    return JobSnapshot(at, accepted, dead, lists, tuple(sorted(buckets)))


def scrape(port: int, timeout_s: float = 2.0) -> JobSnapshot | None:
    """The job's counters from its ``/metrics`` on ``port``; ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except (OSError, http.client.HTTPException):
        return None
    return parse_snapshot(text, time.monotonic())


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of cumulative (le, count) buckets, interpolated within its bucket.

    As PromQL's ``histogram_quantile``: a quantile in the ``+Inf`` bucket is the highest finite
    bound. ``None`` when the histogram is empty.

    >>> bucket_quantile(0.5, [(1.0, 0), (2.0, 10), (float("inf"), 10)])
    1.5
    >>> bucket_quantile(0.99, [(1.0, 0), (2.0, 10), (float("inf"), 20)])
    2.0
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class _Traffic(threading.Thread):
    """Demo events at ``rate``/s (changeable while running), retimed, plus a few malformed ones;
    or, for ``simulator``, closed-loop shoppers using the API at about ``rate`` events/s.

    ``recent`` holds the last user ids sent (copy it with ``list()``, atomic under the GIL)."""

    def __init__(self, settings: Settings, kind: str, rate: float) -> None:
        super().__init__(name="flywheel-traffic", daemon=True)
        self.settings, self.kind, self.rate = settings, kind, rate
        self.halt = threading.Event()
        self.sent = self.malformed = 0
        self.error: BaseException | None = None
        self.recent: deque[str] = deque(maxlen=_RECENT)
        self.simulator: Simulator | None = None

    def run(self) -> None:
        if self.kind == "simulator":
            try:
                self._simulate()
            except Exception as exc:  # reported by the supervising loop
                self.error = exc
            return
        try:
            producer = EventProducer(self.settings)
            try:
                self._pump(self._events(), producer)
            finally:
                producer.close(timeout=5)
        except Exception as exc:  # reported by the supervising loop
            self.error = exc

    def _simulate(self) -> None:
        """Shoppers of :mod:`connectors.simulator` against the API (see ``flywheel simulate``)."""
        from connectors.api_client import HttpApiClient
        from connectors.shoppers import SimConfig
        from connectors.simulate import api_url, wait_for_api
        from connectors.simulator import Simulator, events_per_visit

        base_url = api_url(self.settings)
        wait_for_api(base_url)
        with HttpApiClient(base_url) as client:
            self.simulator = Simulator(client, SimConfig())
            per_visit = events_per_visit(self.simulator.config)
            self.simulator.run(
                rate=lambda: self.rate / per_visit, halt=self.halt, on_visit=self._visited
            )

    def _visited(self, visit: Visit) -> None:
        self.sent += visit.events_sent
        self.recent.append(visit.user_id)

    def _events(self) -> Iterator[dict[str, Any]]:
        from connectors import datasets

        if self.kind == "completejourney":
            return datasets.completejourney_events(None, self.settings.var_dir / "data")
        return datasets.SyntheticShop(_DEMO_USERS, _DEMO_ITEMS).events(_DEMO_EVENTS)

    def _pump(self, events: Iterator[dict[str, Any]], producer: EventProducer) -> None:
        bucket = TokenBucket(self.rate, max(1.0, self.rate / 20), time.monotonic())
        for event in events:
            if bucket.rate != self.rate:
                bucket = TokenBucket(self.rate, max(1.0, self.rate / 20), time.monotonic())
            wait = bucket.take(time.monotonic())
            if self.halt.wait(wait) if wait > 0 else self.halt.is_set():
                return
            producer.send({**event, "ts": time.time_ns() // 1_000_000})
            self.recent.append(str(event["user_id"]))
            self.sent += 1
            if self.sent % _MALFORMED_EVERY == 0:
                producer.send_raw(_MALFORMED[self.malformed % len(_MALFORMED)])
                self.malformed += 1


class _Console:
    """One overwritten status line on a terminal, plain lines otherwise; write errors (a closed
    terminal or pipe) are ignored so that shutting down still completes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.tty, self._open = stream, stream.isatty(), False

    def status(self, line: str) -> None:
        self._write(self.stream, f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self._open = self.tty

    def say(self, *lines: str, stream: IO[str] | None = None) -> None:
        self._write(self.stream, "\n" if self._open else "")
        self._open = False
        self._write(stream or self.stream, "".join(f"{line}\n" for line in lines))

    def fail(self, *lines: str) -> int:
        self.say(*lines, stream=sys.stderr)
        return 1

    @staticmethod
    def _write(stream: IO[str], text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            stream.write(text)
            stream.flush()


class _StopSignal:
    """SIGINT/TERM/HUP handler: sets ``event``; raises KeyboardInterrupt while ``raise_now``."""

    def __init__(self) -> None:
        self.event, self.raise_now = threading.Event(), True

    def __call__(self, signum: int, frame: object) -> None:
        self.event.set()
        if self.raise_now:
            raise KeyboardInterrupt


@dataclass
class _Run:
    settings: Settings
    args: argparse.Namespace
    stack: LocalStack
    job: JobProcess
    console: _Console
    stop: _StopSignal
    traffic: _Traffic | None = None

    def shutdown(self) -> None:
        """Stop the traffic, then the job (the stack is stopped by its context manager)."""
        self.console.say("Stopping the demo traffic, the job and the local stack...")
        if self.traffic is not None:
            self.traffic.halt.set()
            self.traffic.join(timeout=15)
            if self.traffic.simulator is not None:
                from connectors.simulate import save_run

                out = self.settings.var_dir / "simulator"
                results, plot = save_run(self.traffic.simulator, out, "make run: closed loop")
                self.console.say(f"Simulator results: {results}" + (f", {plot}" if plot else ""))
        self.job.stop()


def main(settings: Settings, args: argparse.Namespace) -> None:
    """Run the stack, the job and the demo traffic until Ctrl-C, SIGTERM or ``--duration``.

    Raises
    ------
    SystemExit
        Status 1 when a service or the job fails, or when a ``--duration`` run ends without
        accepted events and written lists; 2 on a non-positive ``--rate`` or ``--duration``.
    """
    console, stop = _Console(sys.stdout), _StopSignal()
    duration = getattr(args, "duration", None)
    if (args.traffic != "none" and not args.rate > 0) or (duration is not None and duration <= 0):
        console.fail(f"flywheel run: --rate and --duration must be > 0 ({args.rate}, {duration})")
        raise SystemExit(2)
    previous = {sig: signal.signal(sig, stop) for sig in _SIGNALS}
    try:
        code = _run(settings, args, console, stop)
    except ServiceError as exc:
        code = console.fail(f"flywheel run: {exc}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise SystemExit(code)


def _run(settings: Settings, args: argparse.Namespace, console: _Console, stop: _StopSignal) -> int:
    with contextlib.ExitStack() as resources:
        try:
            console.say("Starting the local stack (Kafka-protocol broker, Redis, Prometheus)...")
            stack = resources.enter_context(LocalStack(settings))
            job = JobProcess(settings, stack.log_dir / "job.log")
            api = JobProcess(settings, stack.log_dir / "api.log", ("api",))
            run = _Run(settings, args, stack, job, console, stop)
            resources.callback(run.shutdown)
            resources.callback(api.stop)
            run.job.start()
            api.start()
            _print_banner(run)
        finally:
            stop.raise_now = False  # from here on a signal only sets the event
        code = _wait_until_up(run)
        return _report(run) if code is None else code


def _print_banner(run: _Run) -> None:
    s, args = run.settings, run.args
    traffic = f"{args.traffic}, {args.rate:g} events/s, one malformed in {_MALFORMED_EVERY}"
    run.console.say(
        f"  Kafka bootstrap   {s.kafka_bootstrap}  (topics {s.events_topic}, {s.dlq_topic})",
        f"  Redis             {s.redis_url}  (keys {s.redis_prefix}:*)",
        f"  Prometheus        http://{HOST}:{s.prometheus_port}  (e.g. {_EXAMPLE_QUERY})",
        f"  metrics           http://{HOST}:{s.metrics_port}/metrics (job), "
        f"http://{HOST}:{s.flink_metrics_port}/metrics (Flink)",
        f"  API               http://{s.api_host}:{s.api_port}/docs  "
        f"(GET /v1/recommendations?user_id=USER)",
        f"  logs              {run.stack.log_dir}  (job: {run.job.log_path.name}, api.log)",
        "Try (same FLYWHEEL_* environment; USER: a shopper shown below): flywheel list USER",
        "  flywheel features USER    flywheel send --user USER --item ITEM --action click",
        f"Demo traffic: {traffic if args.traffic != 'none' else 'none'}. Ctrl-C stops everything.",
        "Starting the Flink job on a local mini-cluster (~15 s, longer on a busy machine)...",
    )


def _wait_until_up(run: _Run) -> int | None:
    """Wait for the job's metrics (then start traffic) and first list: ``None``, or a status."""
    started, kind = time.monotonic(), run.args.traffic
    while not run.stop.event.wait(1.0):
        code = _failure(run)
        if code is not None:
            return code
        waited, snap = time.monotonic() - started, scrape(run.settings.metrics_port)
        if snap is not None and run.traffic is None and kind != "none":
            run.traffic = _Traffic(run.settings, kind, min(_WARMUP_RATE, run.args.rate))
            run.traffic.start()
        if snap is not None and (kind == "none" or snap.lists_written > 0):
            if run.traffic is not None:
                run.traffic.rate = run.args.rate
            run.console.say(f"The job is up ({waited:.0f} s); rates/freshness over {_WINDOW} s:")
            return None
        if waited > _STARTUP_TIMEOUT_S:
            return run.console.fail("The job is not up in time.", _log_tail(run.job))
        if run.console.tty or round(waited) % 5 == 0:
            state = "running, waiting for its first list" if snap else "starting"
            run.console.status(f"  job {state}... {waited:.0f} s")
    return 0


def _report(run: _Run) -> int:
    """Print the status every second until stopped; the exit status."""
    started, duration = time.monotonic(), getattr(run.args, "duration", None)
    deadline = None if duration is None else started + duration
    history: deque[JobSnapshot] = deque(maxlen=_WINDOW + 1)
    reader, next_shopper = ListReader(run.settings), started + 1.0
    try:
        while not run.stop.event.wait(1.0):
            code = _failure(run)
            if code is not None:
                return code
            snap = scrape(run.settings.metrics_port)
            if snap is not None:
                history.append(snap)
            run.console.status(_status_line(time.monotonic() - started, history, run.traffic))
            if time.monotonic() >= next_shopper:
                _show_shopper(run, reader)
                next_shopper += _SHOPPER_EVERY_S
            if deadline is not None and time.monotonic() >= deadline:
                return _finish(run, history[-1] if history else None, check=True)
    finally:
        reader.close()
    return _finish(run, history[-1] if history else None, check=False)


def _status_line(uptime: float, history: Sequence[JobSnapshot], traffic: _Traffic | None) -> str:
    if not history:
        return f"{uptime:5.0f} s | job metrics not answering"
    first, last = history[0], history[-1]
    rate = (last.accepted - first.accepted) / (last.at - first.at) if last.at > first.at else 0.0
    old = first.freshness  # quantiles of the window; cumulative after a job restart
    fresh = [(le, c - o) for (le, c), (_, o) in zip(last.freshness, old, strict=False)]
    if len(old) != len(last.freshness) or any(c < 0 for _, c in fresh):
        fresh = list(last.freshness)
    p50, p99 = (bucket_quantile(q, fresh) for q in (0.5, 0.99))
    quantiles = "-" if p50 is None or p99 is None else f"p50 {p50:.3f} s  p99 {p99:.3f} s"
    sent = f" | sent {traffic.sent:,}" if traffic is not None else ""
    return (
        f"{uptime:5.0f} s | {max(rate, 0.0):7.1f} ev/s accepted"
        f" | dead letters {last.dead_letters:,.0f} | freshness {quantiles}"
        f" | lists written {last.lists_written:,.0f}{sent}"
    )


def _show_shopper(run: _Run, reader: ListReader) -> None:
    """Print the list of the busiest recent shopper of the demo traffic."""
    simulator = run.traffic.simulator if run.traffic is not None else None
    if simulator is not None:
        from connectors.simulate import ctr_line

        report = simulator.report()
        window = simulator.timeline.totals(since_s=max(0.0, report.elapsed_s - 60.0))
        run.console.say(f"  simulator, last 60 s: {ctr_line(report, window)}")
    try:
        for user, _ in Counter(list(run.traffic.recent if run.traffic else ())).most_common(20):
            rec = reader.get(user)
            if rec is None:
                continue
            age_s = (time.time_ns() // 1_000_000 - rec.written_ts) / 1000
            top = "  ".join(f"{item} {score:.3f}" for item, score in rec.items[:5])
            run.console.say(f"  shopper {user}: {rec.strategy}, written {age_s:.1f} s ago: {top}")
            return
    except RedisError as exc:
        run.console.fail(f"  cannot read lists from Redis: {exc}")


def _failure(run: _Run) -> int | None:
    """Report a dead job, service or traffic thread: status 1; ``None`` when all is well."""
    fail = run.console.fail
    if not run.job.running:
        code = run.job.process.returncode if run.job.process else None
        return fail(f"The job exited unexpectedly (status {code}).", _log_tail(run.job))
    for service in run.stack.services.values():
        if service.process.poll() is not None:
            return fail(f"{service.name} exited; log {service.log_path}:", service.log_tail())
    error = run.traffic.error if run.traffic is not None else None
    return None if error is None else fail(f"Demo traffic failed: {type(error).__name__}: {error}")


def _log_tail(job: JobProcess, lines: int = 40) -> str:
    text = job.log_path.read_text(errors="replace") if job.log_path.exists() else ""
    return f"--- last lines of {job.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _finish(run: _Run, last: JobSnapshot | None, check: bool) -> int:
    """Print a summary; with ``check``, status 1 unless the job accepted events and wrote lists."""
    t = run.traffic
    sent = f"sent {t.sent:,} events ({t.malformed} malformed)" if t else "no demo traffic"
    job = "job metrics unavailable"
    if last is not None:
        job = f"job accepted {last.accepted:,.0f} events, dead-lettered {last.dead_letters:,.0f}"
        job += f", wrote {last.lists_written:,.0f} lists"
    run.console.say(f"Summary: {sent}; {job}.")
    if not check or (last is not None and last.accepted > 0 and last.lists_written > 0):
        return 0
    return run.console.fail("No events were processed or no lists were written.")
