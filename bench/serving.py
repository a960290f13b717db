"""Serving benchmarks: Redis list lookups and the recommendation API, loaded from other processes.

Set-up (everything on free ports, logs under ``var/bench/serving-<date-time>/``, all stopped
on exit, error or Ctrl-C):

1. a fresh redis-server, filled as the job fills it: 20k synthetic shoppers
   (:class:`~connectors.datasets.SyntheticShop`, 100k items, 200k events over 7 days) run
   through the job's per-user logic (:mod:`bench.user_data`); each user's home list (top 50,
   from the job's list builder over a 100k-item table) and features, and the trending list,
   written with the job's writer;
2. **Redis lookups**, from child processes (:mod:`bench.loadgen`): one process makes
   sequential ``GET`` s of random users' list keys on one connection (one round trip each, as
   a frontend does) and times each; then ``clients`` processes do the same at once for a
   fixed time, for lookups/s;
3. **API**: a Tansu broker (the API produces one impression event per served list) and the
   real API process (``flywheel api`` with the default ``FLYWHEEL_API_WORKERS``, two uvicorn
   workers). A child process sends
   ``GET /v1/recommendations?user_id=…&scene=home&k=10`` for random known users (10 % unknown
   ones, who get trending) open loop at fixed rates (100 and 250/s, then the 500/s target
   last, since it may overload the API; latency from each request's scheduled send time) and
   closed loop with ``max_connections`` requests in flight (maximum rate). The API's CPU time
   per request (its process and worker processes) is read from ``/proc`` around each step.
4. The same API with ``compare_workers`` worker processes (one: what a single process does),
   closed loop and the target rate only: keys ``serving.api_*_<step>_<n>workers``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import orjson
import redis

from bench import loadgen
from bench.common import Results, Scrape, say
from bench.user_data import Replay, item_table, replay, written_entries
from connectors.datasets import SyntheticShop
from connectors.redis_lists import TRENDING_SUFFIX, ListWriter, rec_key
from deploy.job_process import JobProcess
from deploy.local_stack import Service, create_topics, free_port, start_broker, start_redis
from flywheel.events import pseudonymise
from flywheel.settings import Settings, load_settings
from serving.process_stats import process_stat

__all__ = ["ServingConfig", "run"]

_SPAWN = multiprocessing.get_context("spawn")  # clean children: no copy of the parent's state


@dataclass(frozen=True)
class ServingConfig:
    """Sizes, rates and durations of one serving benchmark run."""

    n_users: int = 20_000
    n_items: int = 100_000
    n_events: int = 200_000
    days: int = 7
    lookups: int = 50_000
    clients: int = 4
    clients_s: float = 10.0
    api_rate: int = 500
    api_rates: tuple[int, ...] = (100, 250, 500)
    api_s: float = 30.0
    api_connections: int = 64
    max_connections: int = 16
    max_s: float = 15.0
    compare_workers: int = 1
    unknown_fraction: float = 0.1
    seed: int = 11

    @classmethod
    def for_run(cls, quick: bool) -> ServingConfig:
        """The default run, or a shorter one for ``--quick``."""
        return cls(lookups=20_000, clients_s=5.0, api_s=15.0, max_s=10.0) if quick else cls()


def _fill(client: redis.Redis, settings: Settings, cfg: ServingConfig) -> tuple[Replay, int]:
    """Users' lists, features and trending as the job writes them; ``(replay, keys written)``."""
    rate = cfg.n_events / (cfg.days * 86400)
    shop = SyntheticShop(cfg.n_users, cfg.n_items, seed=cfg.seed, rate_per_s=rate)
    out = replay(shop.events(cfg.n_events), settings)
    items = item_table((f"i{k}" for k in range(cfg.n_items)), settings)
    trending = out.trending(settings)
    writer = ListWriter(client, settings.redis_prefix, settings.list_ttl_s)
    written = 0
    for batch in written_entries(out.states, items, trending, settings):
        writer.write_batch(batch)
        written += len(batch)
    writer.write_batch([(TRENDING_SUFFIX, orjson.dumps(trending))])
    return out, written + 1


def _redis_lookups(port: int, keys: list[str], cfg: ServingConfig) -> Results:
    """Sequential latencies from one child process, then lookups/s from ``clients`` children."""
    with ProcessPoolExecutor(1, mp_context=_SPAWN) as pool:
        ns, missing = pool.submit(loadgen.redis_latencies, port, keys, cfg.lookups, 1).result()
    summary = loadgen.latency_summary([v / 1e6 for v in ns])
    say(f"redis: {cfg.lookups:,} sequential GETs: p50 {summary['p50']:.3f} ms, "
        f"p99 {summary['p99']:.3f} ms")  # fmt: skip
    with ProcessPoolExecutor(cfg.clients, mp_context=_SPAWN) as pool:
        start_at = time.time() + 3.0  # every child connected and waiting
        runs = [
            pool.submit(loadgen.redis_throughput, port, keys, start_at, cfg.clients_s, 100 + k)
            for k in range(cfg.clients)
        ]
        done = [r.result() for r in runs]
    per_s = sum(count / seconds for count, seconds, _ in done)
    missing += sum(m for _, _, m in done)
    say(f"redis: {cfg.clients} clients at once: {per_s:,.0f} lookups/s")
    return {
        "serving.redis_lookup_p50_ms": round(summary["p50"], 4),
        "serving.redis_lookup_p90_ms": round(summary["p90"], 4),
        "serving.redis_lookup_p99_ms": round(summary["p99"], 4),
        "serving.redis_lookup_max_ms": round(summary["max"], 3),
        "serving.redis_lookups_per_s": round(per_s, 1),
        "serving.redis_lookup_clients": cfg.clients,
        "serving.redis_lookups_missing": missing,
    }


def _server_us_per_get(port: int) -> float:
    """Redis's own time per ``GET`` (``INFO commandstats``), all lookups above included."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        stats = cast("dict[str, Any]", client.info("commandstats"))
    finally:
        client.close()
    return round(float(stats["cmdstat_get"]["usec_per_call"]), 3)


def _paths(known: list[str], cfg: ServingConfig, count: int) -> list[str]:
    """Request paths over random known users, ``unknown_fraction`` of them never seen."""
    rng = random.Random(cfg.seed)
    out = []
    for k in range(count):
        unknown = rng.random() < cfg.unknown_fraction
        user = f"new-{k}" if unknown else rng.choice(known)
        out.append("/v1/recommendations?" + urlencode({"user_id": user, "scene": "home", "k": 10}))
    return out


def _wait_api(port: int, process: JobProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running:
            tail = process.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the API exited; log {process.log_path}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not become healthy within {timeout_s:.0f} s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its live child processes
    (the API's workers), from ``/proc``."""
    try:
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except FileNotFoundError:  # the process (or a thread) ended meanwhile
        return 0.0
    stat = process_stat(pid)
    own = stat[1] if stat is not None else 0.0
    return own + sum(_cpu_seconds(child) for child in children)


def _api_figures(tag: str, result: loadgen.LoadResult, cpu_s: float) -> Results:
    summary = loadgen.latency_summary(result.latencies_ms)
    answered = max(result.ok + result.warmup_ok, 1)  # CPU per request the server answered
    return {
        f"serving.api_p50_ms_{tag}": round(summary["p50"], 3),
        f"serving.api_p90_ms_{tag}": round(summary["p90"], 3),
        f"serving.api_p99_ms_{tag}": round(summary["p99"], 3),
        f"serving.api_max_ms_{tag}": round(summary["max"], 3),
        f"serving.api_requests_{tag}": result.sent,
        f"serving.api_achieved_rps_{tag}": round(result.ok / max(result.elapsed_s, 1e-9), 1),
        f"serving.api_errors_{tag}": result.errors,
        f"serving.api_unanswered_{tag}": result.unanswered,
        f"serving.api_personal_fraction_{tag}": round(result.personal / max(result.ok, 1), 3),
        f"serving.api_empty_lists_{tag}": result.empty,
        f"serving.api_cpu_ms_per_request_{tag}": round(1000 * cpu_s / answered, 3),
        f"serving.client_cpu_ms_per_request_{tag}": round(1000 * result.cpu_s / answered, 3),
    }


def _api_steps(cfg: ServingConfig, lower_rates: bool = True) -> list[tuple[str, float, float]]:
    """``(tag, rate, seconds)`` in order: the lower open-loop rates, the closed loop
    (``rate`` 0), then the target rate, which may overload the API and so comes last."""
    lower = [(f"at_{r}rps", float(r), cfg.api_s) for r in cfg.api_rates if r != cfg.api_rate]
    last = [("max", 0.0, cfg.max_s), (f"at_{cfg.api_rate}rps", cfg.api_rate, cfg.api_s)]
    return [*lower, *last] if lower_rates else last


def _api(
    settings: Settings, known: list[str], cfg: ServingConfig, logs: Path, results: Results
) -> None:
    """The API under open-loop load at each rate and closed-loop maximum, into ``results``;
    then, with ``cfg.compare_workers`` worker processes, the maximum and the target rate."""
    _api_run(settings, known, cfg, logs, results, "")
    results["serving.api_workers"] = settings.api_workers
    if cfg.compare_workers != settings.api_workers:
        other = settings.with_overrides(api_workers=cfg.compare_workers)
        _api_run(other, known, cfg, logs, results, f"_{cfg.compare_workers}workers")


def _api_run(
    settings: Settings,
    known: list[str],
    cfg: ServingConfig,
    logs: Path,
    results: Results,
    suffix: str,
) -> None:
    """One API process (``settings.api_workers`` workers) through its steps; keys end in
    ``suffix``."""
    process = JobProcess(settings, logs / f"api{suffix}.log", ("api",))
    try:
        process.start()
        _wait_api(settings.api_port, process)
        paths, port = _paths(known, cfg, 20_000), settings.api_port
        pid = process.process.pid if process.process else 0
        with ProcessPoolExecutor(1, mp_context=_SPAWN) as pool:
            for step, rate, seconds in _api_steps(cfg, lower_rates=not suffix):
                tag = f"{step}{suffix}"
                time.sleep(2.0)  # the previous step's last answers are out
                cpu = _cpu_seconds(pid)
                if rate:
                    say(f"api{suffix}: open loop, {rate:.0f} requests/s for {seconds:.0f} s "
                        "(+2 s warm-up)")  # fmt: skip
                    args = (port, paths, rate, seconds, 2.0, cfg.api_connections)
                    run = pool.submit(loadgen.open_loop, *args).result()
                else:
                    say(f"api{suffix}: closed loop, {cfg.max_connections} connections for "
                        f"{seconds:.0f} s")  # fmt: skip
                    args2 = (port, paths[::-1], cfg.max_connections, seconds)
                    run = pool.submit(loadgen.closed_loop, *args2).result()
                results.update(_api_figures(tag, run, _cpu_seconds(pid) - cpu))
                p50, p99 = (
                    results[f"serving.api_p50_ms_{tag}"],
                    results[f"serving.api_p99_ms_{tag}"],
                )
                say(f"api {tag}: {results[f'serving.api_achieved_rps_{tag}']:,.0f} answers/s, "
                    f"p50 {p50:,.1f} ms, p99 {p99:,.1f} ms, {run.errors} errors")  # fmt: skip
        scrape = Scrape.fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        process.stop()
    results.update({
        f"serving.api_errors{suffix}": results[f"serving.api_errors_at_{cfg.api_rate}rps{suffix}"],
        f"serving.api_max_rps{suffix}": results[f"serving.api_achieved_rps_max{suffix}"],
        "serving.api_max_connections": cfg.max_connections,
        f"serving.api_impressions_lost{suffix}": scrape.total(
            "flywheel_api_impressions_lost_total"
        ),
    })  # fmt: skip


@contextmanager
def _services(logs: Path) -> Iterator[tuple[Service, Service]]:
    with ExitStack() as stack:
        redis_service = start_redis(free_port(), logs)
        stack.callback(redis_service.stop)
        broker = start_broker(free_port(), logs)
        stack.callback(broker.stop)
        yield redis_service, broker


def run(quick: bool = False, into: Results | None = None, work: Path | None = None) -> Results:
    """Fill Redis, measure lookups, then the API; ``serving.*`` keys.

    Keys are added to ``into`` (when given) as soon as each part ends.
    """
    cfg = ServingConfig.for_run(quick)
    logs = (work or Path("var/bench") / f"serving-{time.strftime('%Y%m%d-%H%M%S')}") / "logs"
    results: Results = {} if into is None else into
    results.update({
        "serving.users": cfg.n_users, "serving.catalogue_items": cfg.n_items,
        "serving.quick": int(quick), "serving.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "serving.loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    with _services(logs) as (redis_service, broker):
        settings = load_settings(
            kafka_bootstrap=broker.address, redis_url=f"redis://{redis_service.address}/0",
            redis_prefix="bench-serve", events_topic="bench-serve-events",
            dlq_topic="bench-serve-events.dlq", item_sync_topic="bench-serve-items",
            api_port=free_port(), metrics_port=free_port(), var_dir=logs.parent,
        )  # fmt: skip
        create_topics(broker.address, [settings.events_topic], 1)
        client = redis.Redis(host="127.0.0.1", port=redis_service.port)
        try:
            say(f"filling Redis: {cfg.n_users:,} users, {cfg.n_events:,} events, "
                f"{cfg.n_items:,} items (the job's state logic and list builder)")  # fmt: skip
            out, written = _fill(client, settings, cfg)
            results["serving.redis_keys"] = written
        finally:
            client.close()
        keys = [rec_key(settings.redis_prefix, "home", user) for user in out.states]
        results.update(_redis_lookups(redis_service.port, keys, cfg))
        results["serving.redis_server_us_per_get"] = _server_us_per_get(redis_service.port)
        names = {pseudonymise(f"u{k}", settings.hmac_key): f"u{k}" for k in range(cfg.n_users)}
        known = [names[user] for user in out.states]
        _api(settings, known, cfg, logs, results)
    results["serving.loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return results
