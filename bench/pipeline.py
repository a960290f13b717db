"""End-to-end benchmark: the real job on the embedded broker, Redis and a Flink mini-cluster.

Phases (progress is printed as they run):

1. start a Tansu broker, a Redis and the job (:class:`~deploy.job_process.JobProcess`,
   parallelism 1 unless ``overrides`` say otherwise, 32 factors, checkpoints every 10 s), each
   on a free port, with logs under ``var/bench/<run>/`` (checkpoints too, deleted at the end);
   the events topic gets one partition per subtask. With ``taskmanagers`` the job runs
   instead on a standalone cluster (:mod:`deploy.local_cluster`) of that many one-slot
   TaskManagers at that parallelism, each TaskManager JVM with its own Python interpreter;
   metrics are scraped from every TaskManager and summed;
2. pre-warm: one ``view`` of every catalogue item ``i0..i{n-1}``, so the item table really
   holds ``n_items`` rows (the job adds an item on its first event) and top-N costs what it
   would on a full catalogue. The first events give each synthetic user ``cold_user_events
   - 1`` events (still cold: cheap trending lists), the rest come from throw-away users
   ``w<k>``; every later event of a synthetic user is warm (MF over the whole catalogue);
3. sustained throughput: ``n_events`` synthetic events (random user among ``n_users``),
   pre-serialised and produced as fast as one producer thread can; the rate is the growth of
   ``flywheel_job_events_total{outcome="accepted"}`` scraped from the job's ``/metrics`` over
   the steady part (first ``skip_s`` seconds and the last 5 % excluded); CPU per event is the
   job's processes' (mini-cluster, or JobManager + TaskManagers), and the CPU cores used by
   each job process, the broker, Redis and this process (the producer) are reported too;
4. freshness at offered load: paced production at each rate for ``step_s`` seconds with
   ``ts`` = now; p50/p99 of ``flywheel_job_freshness_seconds`` (Redis write time minus the
   Kafka record timestamp) come from the histogram's bucket deltas over the step, taken once
   the step's events are all processed (so a job that falls behind is charged for it).

Everything started is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import FlinkBusy, Results, Scrape, bucket_deltas, histogram_quantile, say
from bench.pipeline_job import ACCEPTED, FRESHNESS, PipelineJob, running_job
from connectors.datasets import SyntheticShop
from connectors.producer import EventProducer
from flywheel.events import pseudonymise
from flywheel.settings import Settings

__all__ = ["PipelineConfig", "run"]

Record = tuple[bytes, bytes]  # key, payload
# result key -> name prefix of the task's thread (named after its operator chain, cut to 15
# characters by the kernel)
_TASK_THREADS = {
    "users": "users",
    "item_neighbours": "item-neighbours",
    "source_parse": "Source: events",
}
KeyOf = Callable[[str], bytes]  # user id -> Kafka key


@dataclass(frozen=True)
class PipelineConfig:
    """Sizes and durations of one pipeline benchmark run."""

    n_items: int = 100_000
    n_users: int = 20_000
    n_events: int = 200_000
    rates: tuple[int, ...] = (250, 500, 1000, 2000)
    step_s: float = 30.0
    skip_s: float = 5.0
    seed: int = 7

    @classmethod
    def for_run(cls, quick: bool) -> PipelineConfig:
        """The default run, or a shorter one (fewer events, shorter steps) for ``--quick``."""
        return cls(n_events=30_000, step_s=15.0) if quick else cls()


def _key_maker(hmac_key: str) -> KeyOf:
    """Kafka key (the user's pseudonym) of a user, computed once per user."""
    return functools.cache(lambda user: pseudonymise(user, hmac_key).encode())


def _record(event: dict[str, Any], keys: KeyOf, event_id: str, ts: int) -> Record:
    event["event_id"], event["ts"] = event_id, ts
    return keys(event["user_id"]), orjson.dumps(event)


def _send_all(settings: Settings, records: Sequence[Record], stop: threading.Event) -> float:
    """Produce ``records`` as fast as possible; returns the seconds it took (with flush)."""
    started = time.monotonic()
    producer = EventProducer(settings)
    try:
        for i, (key, payload) in enumerate(records):
            if i % 4096 == 0 and stop.is_set():
                break
            producer.send_raw(payload, key)
    finally:
        producer.close(timeout=60)
    return time.monotonic() - started


def _produce_and_track(
    job: PipelineJob,
    records: Sequence[Record],
    what: str,
    timeout_s: float,
    every_5s: Callable[[], None] | None = None,
) -> tuple[list[tuple[float, float]], float, float]:
    """Produce ``records`` in a thread while sampling the accepted counter once a second.

    Returns ``(samples, t_start, t_produced)``: ``(time, accepted since start)`` samples until
    all records are accepted (or ``timeout_s``), the start time and the producer's end time.
    ``every_5s`` is called every fifth sample (e.g. to sample other metrics).
    """
    base, stop, took = job.accepted(), threading.Event(), [0.0]
    thread = threading.Thread(
        target=lambda: took.__setitem__(0, _send_all(job.settings, records, stop)), daemon=True
    )
    t_start = time.monotonic()
    thread.start()
    samples: list[tuple[float, float]] = []
    try:
        while time.monotonic() - t_start < timeout_s:
            job.check_alive()
            now, done = time.monotonic(), job.accepted() - base
            samples.append((now, done))
            if len(samples) % 5 == 1:
                rate = (done - samples[-6][1]) / (now - samples[-6][0]) if len(samples) > 5 else 0
                sent = "all sent" if not thread.is_alive() else "sending"
                say(f"{what}: {sent}, {done:,.0f} / {len(records):,} accepted ({rate:,.0f}/s)")
                if every_5s is not None:
                    every_5s()
            if done >= len(records):
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    finally:
        stop.set()
        thread.join()
    return samples, t_start, t_start + took[0]


def _prewarm(job: PipelineJob, cfg: PipelineConfig, keys: KeyOf, shop: SyntheticShop) -> Results:
    """One view of every item (see the module docstring); waits until the table holds all."""
    now, per_user = int(time.time() * 1000), max(0, job.settings.cold_user_events - 1)
    records = [
        _record(
            {"user_id": f"u{k % cfg.n_users}" if k < per_user * cfg.n_users else f"w{k}",
             "item_id": f"i{k}", "action": "view", "category": shop.item_category(k)},
            keys, f"warm-{k}", now,
        )
        for k in range(cfg.n_items)
    ]  # fmt: skip
    say(f"pre-warm: {len(records):,} events touching every item")
    samples, t_start, _ = _produce_and_track(job, records, "pre-warm", 1800.0)
    items = job.items()
    while items < cfg.n_items and time.monotonic() - samples[-1][0] < 60:
        time.sleep(0.5)  # the gauge follows the item-sync round trip
        items = job.items()
    say(f"pre-warm: done in {samples[-1][0] - t_start:.0f} s, item table {items:,.0f}")
    return {
        "pipeline.prewarm_s": round(samples[-1][0] - t_start, 1),
        "pipeline.prewarm_events_per_s": round(samples[-1][1] / (samples[-1][0] - t_start), 1),
        "pipeline.items": int(items),
    }


def _steady_rate(samples: list[tuple[float, float]], t_from: float, n: int) -> float:
    """Accepted/s between the first sample after ``t_from`` and the last below 95 % of n."""
    steady = [(t, c) for t, c in samples if t >= t_from and c <= 0.95 * n]
    if len(steady) < 2:
        steady = [samples[0], samples[-1]]
    (t0, c0), (t1, c1) = steady[0], steady[-1]
    return (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")


def _delta(before: Scrape, after: Scrape, name: str) -> float:
    return after.total(name) - before.total(name)


def _time_split(before: Scrape, after: Scrape, wall_s: float) -> Results:
    """Where the job's time went between two scrapes, from the top-N batch histograms."""
    users = _delta(before, after, "flywheel_job_topn_batch_users_sum")
    seconds = _delta(before, after, "flywheel_job_topn_batch_seconds_sum")
    batches = _delta(before, after, "flywheel_job_topn_batch_seconds_count")
    durations = bucket_deltas(before, after, "flywheel_job_topn_batch_seconds")
    sizes = bucket_deltas(before, after, "flywheel_job_topn_batch_users")
    per_batch = seconds / batches if batches else float("nan")
    single = sizes[0][1] / batches if batches and sizes and sizes[0][0] == 1 else float("nan")
    return {
        "pipeline.topn_batches_per_s": round(batches / wall_s, 2),
        "pipeline.topn_batch_users_mean": round(users / batches if batches else 0.0, 1),
        "pipeline.topn_single_user_batch_fraction": round(single, 3),
        "pipeline.topn_batch_ms_mean": round(per_batch * 1000, 2),
        "pipeline.topn_batch_ms_p99": round(histogram_quantile(0.99, durations) * 1000, 1),
        "pipeline.topn_ms_per_list": round(seconds / users * 1000 if users else 0.0, 3),
        "pipeline.topn_busy_fraction": round(seconds / wall_s, 3),
    }


def _thread_split(
    before: Mapping[str, float], after: Mapping[str, float], events: float
) -> Results:
    """CPU ms per accepted event of each task thread (:data:`_TASK_THREADS`) and of all other
    threads together (JIT compiler, garbage collector, checkpoints, Kafka clients, the client
    process), between two :meth:`~bench.pipeline_job.PipelineJob.thread_cpu` readings.

    >>> _thread_split({"users -> Sink: ": 1.0}, {"users -> Sink: ": 3.0, "C2 Compiler": 0.5}, 1000)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'pipeline.thread_cpu_ms_per_event.users': 2.0,
     'pipeline.thread_cpu_ms_per_event.item_neighbours': 0.0,
     'pipeline.thread_cpu_ms_per_event.source_parse': 0.0,
     'pipeline.thread_cpu_ms_per_event.other': 0.5}
    """
    used = {name: seconds - before.get(name, 0.0) for name, seconds in after.items()}
    results: Results = {}
    rest = sum(used.values())
    for key, prefix in _TASK_THREADS.items():
        seconds = sum(v for name, v in used.items() if name.startswith(prefix))
        rest -= seconds
        results[f"pipeline.thread_cpu_ms_per_event.{key}"] = round(seconds * 1000 / events, 3)
    results["pipeline.thread_cpu_ms_per_event.other"] = round(rest * 1000 / events, 3)
    return results


def _throughput(job: PipelineJob, cfg: PipelineConfig, keys: KeyOf, shop: SyntheticShop) -> Results:
    """Sustained rate of the job on a backlog of ``n_events`` random-user events."""
    now = int(time.time() * 1000)
    records = [_record(e, keys, f"tp-{k}", now) for k, e in enumerate(shop.events(cfg.n_events))]
    say(f"throughput: producing {len(records):,} pre-serialised events")
    before, cpu_before, threads_before = job.scrape(), job.cpu_seconds(), job.thread_cpu()
    timeout = max(300.0, cfg.n_events / 50)
    flink = FlinkBusy(job.flink_ports)
    by_process, by_endpoint = job.cpu_by_process(), job.accepted_by_endpoint()
    samples, t_start, t_sent = _produce_and_track(job, records, "throughput", timeout, flink.sample)
    after, cpu_after, threads_after = job.scrape(), job.cpu_seconds(), job.thread_cpu()
    by_process = {k: v - by_process.get(k, 0.0) for k, v in job.cpu_by_process().items()}
    by_endpoint = [b - a for a, b in zip(by_endpoint, job.accepted_by_endpoint(), strict=True)]
    rate = _steady_rate(samples, t_start + cfg.skip_s, len(records))
    wall = samples[-1][0] - t_start
    accepted = max(1.0, _delta(before, after, ACCEPTED))
    lists = _delta(before, after, "flywheel_job_lists_written_total")
    neighbour_updates = _delta(before, after, "flywheel_job_neighbour_updates_total")
    neighbour_lists = _delta(before, after, "flywheel_job_neighbour_lists_written_total")
    results: Results = {
        "pipeline.events_per_s": round(rate, 1),
        "pipeline.produce_events_per_s": round(len(records) / max(t_sent - t_start, 1e-9), 1),
        "pipeline.throughput_events": len(records),
        "pipeline.throughput_complete": int(samples[-1][1] >= len(records)),
        "pipeline.lists_per_event": round(lists / max(1.0, samples[-1][1]), 3),
        "pipeline.neighbour_lists_per_update": round(
            neighbour_lists / neighbour_updates if neighbour_updates else 0.0, 3
        ),
        "pipeline.model_updates_per_s": round(
            _delta(before, after, "flywheel_job_model_updates_total") / wall, 1
        ),
        "pipeline.cpu_ms_per_event": round((cpu_after - cpu_before) * 1000 / accepted, 3),
        "pipeline.cpu_cores": round((cpu_after - cpu_before) / wall, 2),
    }
    results.update({
        f"pipeline.cpu_cores.{name.replace('-', '_')}": round(seconds / wall, 2)
        for name, seconds in sorted(by_process.items())
    })  # fmt: skip
    if len(by_endpoint) > 1:  # how evenly the TaskManagers shared the events
        results.update({
            f"pipeline.accepted_share.taskmanager_{k + 1}": round(n / accepted, 3)
            for k, n in enumerate(by_endpoint)
        })  # fmt: skip
    results.update(_time_split(before, after, wall))
    results.update(_thread_split(threads_before, threads_after, accepted))
    results.update(flink.means())
    say(f"throughput: {rate:,.0f} events/s (steady part), producer {t_sent - t_start:.1f} s")
    return results


def _paced(
    job: PipelineJob, records: Iterator[Record], rate: int, duration_s: float
) -> tuple[int, float]:
    """Produce ``rate`` events/s for ``duration_s`` (ts = send time); returns (sent, seconds)."""
    producer, total, sent = EventProducer(job.settings), int(rate * duration_s), 0
    started = last_print = time.monotonic()
    try:
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                key, payload = next(records)
                producer.send_raw(payload, key)
                sent += 1
            if time.monotonic() - last_print >= 5:
                say(f"freshness {rate} eps: {sent:,} / {total:,} sent")
                last_print = time.monotonic()
            time.sleep(0.002)
    finally:
        producer.close(timeout=60)
    return sent, time.monotonic() - started


def _live_records(cfg: PipelineConfig, keys: KeyOf) -> Iterator[Record]:
    """Endless synthetic events stamped with the time they are taken (a new seed per pass)."""
    for seed in range(cfg.seed + 1, cfg.seed + 1_000):
        shop = SyntheticShop(cfg.n_users, cfg.n_items, seed=seed)
        for k, event in enumerate(shop.events(100_000)):
            yield _record(event, keys, f"fr{seed}-{k}", int(time.time() * 1000))


def _freshness(job: PipelineJob, cfg: PipelineConfig, keys: KeyOf, results: Results) -> None:
    """Freshness p50/p99 and processed rate at each offered rate, into ``results``."""
    records = _live_records(cfg, keys)
    for rate in cfg.rates:
        job.settle()  # the previous phase's last lists are written before the step starts
        before = job.scrape()
        base = before.total(ACCEPTED, outcome="accepted")
        say(f"freshness: offering {rate} events/s for {cfg.step_s:.0f} s")
        sent, took = _paced(job, records, rate, cfg.step_s)
        processed = job.accepted() - base
        drain_s = max(120.0, 3 * cfg.step_s, sent / 150)
        drained = job.wait_accepted(base + sent, drain_s, f"{rate} eps drain")
        job.settle()  # the step's last lists get written
        after = job.scrape()
        deltas = bucket_deltas(before, after, FRESHNESS)
        observed = _delta(before, after, f"{FRESHNESS}_count")
        p50, p99 = (histogram_quantile(q, deltas) * 1000 for q in (0.5, 0.99))
        tag = f"at_{rate}eps"
        results[f"pipeline.freshness_p50_ms_{tag}"] = round(p50, 1)
        results[f"pipeline.freshness_p99_ms_{tag}"] = round(p99, 1)
        results[f"pipeline.offered_eps_{tag}"] = round(sent / took, 1)
        results[f"pipeline.processed_eps_{tag}"] = round(processed / took, 1)
        results[f"pipeline.drained_{tag}"] = int(drained)
        results[f"pipeline.freshness_obs_per_event_{tag}"] = round(observed / max(sent, 1), 3)
        say(f"freshness {rate} eps: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, kept up at "
            f"{processed / took:,.0f}/s{'' if drained else ' (NOT drained)'}")  # fmt: skip


def run(
    quick: bool = False,
    into: Results | None = None,
    work: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    taskmanagers: int = 0,
) -> Results:
    """Run every phase; returns ``pipeline.*`` keys. ``overrides`` change job settings (e.g.
    ``{"neighbour_context": 0}`` for the core loop without item-to-item lists,
    ``{"parallelism": 2}`` for two subtasks per operator; Flink's busy gauges are then summed
    over the subtasks). ``taskmanagers`` > 0 runs the job on a standalone cluster of that
    many one-slot TaskManagers (:mod:`deploy.local_cluster`) at that parallelism instead of
    the local mini-cluster; the job's CPU is then the JobManager's and TaskManagers'.

    Each phase's keys are added to ``into`` (when given) as soon as the phase ends, so a
    caller keeps the finished phases' figures when a later one fails or is interrupted.
    """
    cfg = PipelineConfig.for_run(quick)
    work = work or Path("var/bench") / time.strftime("%Y%m%d-%H%M%S")
    results: Results = {} if into is None else into
    results.update({
        "pipeline.users": cfg.n_users,
        "pipeline.catalogue_items": cfg.n_items,
        "pipeline.n_factors": 32,
        "pipeline.quick": int(quick),
        "pipeline.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    shop = SyntheticShop(cfg.n_users, cfg.n_items, seed=cfg.seed)
    with running_job(work.resolve(), overrides or {}, taskmanagers) as job:
        results["pipeline.parallelism"] = job.settings.parallelism
        results["pipeline.checkpoint_interval_s"] = job.settings.checkpoint_interval_ms / 1000
        if taskmanagers:
            results["pipeline.taskmanagers"] = taskmanagers
        keys = _key_maker(job.settings.hmac_key)
        results.update(_prewarm(job, cfg, keys, shop))
        results.update(_throughput(job, cfg, keys, shop))
        _freshness(job, cfg, keys, results)
    return results
