"""Helpers shared by the benchmarks: timing, the results file, machine facts, metric scrapes.

Results are flat ``{"section.name": value}`` dicts. :func:`merge_results` folds a run's
results into ``bench/results/latest.json`` and keeps every key the run did not recompute.
:class:`Scrape` reads a Prometheus text exposition (the job's ``/metrics``), and
:func:`histogram_quantile` estimates quantiles from bucket deltas as Prometheus does;
:class:`FlinkBusy` samples Flink's own per-task busy and back-pressure gauges.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "LATEST",
    "RESULTS_DIR",
    "FlinkBusy",
    "Results",
    "Scrape",
    "Value",
    "bucket_deltas",
    "format_table",
    "histogram_quantile",
    "machine_info",
    "median_seconds",
    "merge_results",
    "say",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest.json"

Value = float | int | str
Results = dict[str, Value]
Buckets = list[tuple[float, float]]


def say(message: str) -> None:
    """One progress line on stdout, with the wall-clock time."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median_seconds(fn: Callable[[], object], repeats: int = 5, min_time_s: float = 0.2) -> float:
    """Median over ``repeats`` of the mean duration of one call of ``fn``, in seconds.

    One warm-up call first; each repeat calls ``fn`` until at least ``min_time_s`` passed.
    """
    fn()
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time_s:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(command: str) -> Results:
    """Facts about this machine and run, as ``meta.*`` keys."""
    import numpy as np

    from bench.machine import python_reference_ms

    load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    return {
        "meta.nproc": os.cpu_count() or 0,
        "meta.cpu_model": _cpu_model(),
        "meta.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "meta.python": platform.python_version(),
        "meta.numpy": np.__version__,
        "meta.loadavg_1m_at_start": round(load_1m, 2),
        "meta.python_ref_ms": round(python_reference_ms(), 1),  # the host's speed (bench.machine)
        "meta.command": command,
    }


def merge_results(
    new: Mapping[str, Value], path: Path = LATEST, replace_prefix: str | None = None
) -> Results:
    """Fold ``new`` into the JSON file at ``path`` (kept keys survive); returns the merge.

    With ``replace_prefix``, kept keys under that prefix are dropped first: ``new`` replaces
    that whole section (a complete re-run leaves no stale keys behind).
    """
    merged: Results = {}
    if path.exists():
        try:
            merged = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            merged = {}
    if replace_prefix:
        merged = {k: v for k, v in merged.items() if not k.startswith(replace_prefix)}
    merged.update(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
    os.replace(partial, path)
    return merged


def _format_value(value: Value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(results: Mapping[str, Value], keys: Iterable[str] | None = None) -> str:
    """A two-column text table of ``keys`` (default: all, sorted)."""
    names = sorted(results) if keys is None else list(keys)
    width = max((len(n) for n in names), default=3)
    rows = [f"{'key':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    rows += [f"{n:<{width}}  {_format_value(results[n])}" for n in names]
    return "\n".join(rows)


@dataclass(frozen=True)
class Scrape:
    """One scrape of a Prometheus text endpoint: ``(sample name, labels, value)`` triples."""

    samples: tuple[tuple[str, dict[str, str], float], ...]
    at: float

    @classmethod
    def fetch(cls, url: str, timeout_s: float = 5.0) -> Scrape:
        """GET ``url`` and parse it (raises OSError when the endpoint does not answer)."""
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
        samples = tuple(
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        )
        return cls(samples, time.monotonic())

    @classmethod
    def merged(cls, scrapes: Sequence[Scrape]) -> Scrape:
        """The samples of several endpoints as one scrape (sums add up over them)."""
        return cls(tuple(s for scrape in scrapes for s in scrape.samples), scrapes[-1].at)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Samples called ``name`` summed per value of ``label``."""
        out: dict[str, float] = {}
        for sample, have, value in self.samples:
            if sample == name and label in have:
                out[have[label]] = out.get(have[label], 0.0) + value
        return out

    def buckets(self, histogram: str) -> Buckets:
        """Cumulative ``(upper bound, count)`` of a histogram, summed over label sets."""
        counts: dict[float, float] = {}
        for sample, labels, value in self.samples:
            if sample == f"{histogram}_bucket":
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + value
        return sorted(counts.items())


def bucket_deltas(before: Scrape, after: Scrape, histogram: str) -> Buckets:
    """Cumulative bucket counts of ``histogram`` observed between two scrapes."""
    old = dict(before.buckets(histogram))
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after.buckets(histogram)]


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The ``q`` quantile of cumulative buckets, interpolated linearly within a bucket.

    Same rules as Prometheus's ``histogram_quantile``: the first bucket starts at 0, a rank
    in the ``+Inf`` bucket returns the highest finite bound, no observations give NaN.

    >>> histogram_quantile(0.5, [(1.0, 0.0), (2.0, 10.0), (math.inf, 10.0)])
    1.5
    >>> histogram_quantile(0.99, [(1.0, 0.0), (2.0, 5.0), (math.inf, 10.0)])
    2.0
    """
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


_FLINK_TASK_GAUGES = (
    ("busyTimeMsPerSecond", "busy"),
    ("backPressuredTimeMsPerSecond", "backpressured"),
)


class FlinkBusy:
    """Samples of Flink's busy/back-pressured ms per second per task (its own reporter)."""

    def __init__(self, port: int | Sequence[int]):
        ports = [port] if isinstance(port, int) else list(port)
        self.urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        self.samples: dict[str, list[float]] = {}

    def sample(self) -> None:
        """One sample of each task's gauges, summed over the subtasks on every endpoint (a
        standalone cluster has one per JobManager and TaskManager; one that does not answer is
        left out)."""
        scrapes = []
        for url in self.urls:
            with contextlib.suppress(OSError):
                scrapes.append(Scrape.fetch(url, timeout_s=2))
        if not scrapes:
            return
        scrape = Scrape.merged(scrapes)
        for metric, short in _FLINK_TASK_GAUGES:
            by_task = scrape.by_label(f"flink_taskmanager_job_task_{metric}", "task_name")
            for task, value in by_task.items():
                self.samples.setdefault(f"{_short(task)}.{short}_ms_per_s", []).append(value)

    def means(self) -> Results:
        """Mean of the samples, as ``pipeline.flink.<task>.<metric>`` keys."""
        return {
            f"pipeline.flink.{name}": round(sum(v) / len(v), 1)
            for name, v in sorted(self.samples.items())
        }


def _short(task: str) -> str:
    """The first operator of a (sanitised) task name: ``Source: events -> ...`` -> ``events``.

    >>> _short("Source:_events____Process_____Map"), _short("users_____Writer")
    ('events', 'users')
    """
    flat = re.sub(r"[^a-z0-9]", "_", task.lower())
    flat = re.sub(r"^source_+", "", flat)
    return flat.split("__")[0].strip("_") or flat
