"""Memory and CPU of the API's processes, read from ``/proc`` when ``/metrics`` is scraped.

``prometheus_client``'s own process collector does not work with several worker processes
(multiprocess mode), and each worker would report only itself. :class:`ApiProcessCollector`
instead finds the API's processes at scrape time and reports their sums:

- ``FLYWHEEL_API_WORKERS=1`` (one process, no multiprocess directory): the process itself;
- several workers (the default, two): every live process that has written metrics to the
  shared multiprocess directory (files ``<type>_<pid>.db``, one set per worker) plus the
  uvicorn supervisor that started them (the scraping worker's parent).

Metrics: ``flywheel_api_resident_memory_bytes`` (sum of resident set sizes),
``flywheel_api_cpu_seconds_total`` (user + system CPU of the live processes; it drops when a
worker is replaced, which Prometheus's ``rate`` reads as a counter reset) and
``flywheel_api_processes``. State: none; each scrape reads a few small ``/proc`` files per
process. On a system without ``/proc`` the collector reports nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ApiProcessCollector", "api_pids", "process_stat", "process_usage", "thread_cpu"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PID_FILE = re.compile(r"_(\d+)\.db$")
_PROC = Path("/proc")


def api_pids(multiprocess_dir: str | None) -> list[int]:
    """The API's live process ids: this process alone, or with a multiprocess directory the
    workers that write there and their supervisor (this process's parent)."""
    if not multiprocess_dir:
        return [os.getpid()]
    pids = {os.getpid(), os.getppid()}
    for name in os.listdir(multiprocess_dir):
        found = _PID_FILE.search(name)
        if found:
            pids.add(int(found.group(1)))
    return sorted(pid for pid in pids if pid > 1 and (_PROC / str(pid)).exists())


def process_stat(pid: int) -> tuple[int, float] | None:
    """``(process group id, user + system CPU seconds of all its threads)`` of process
    ``pid`` from ``/proc/<pid>/stat``, ``None`` if it is gone.

    >>> group, cpu = process_stat(os.getpid())
    >>> group == os.getpgid(0) and cpu >= 0
    True
    """
    try:
        _, group, seconds = _parse_stat((_PROC / str(pid) / "stat").read_text())
    except OSError:
        return None
    return group, seconds


def thread_cpu(pid: int) -> dict[str, float]:
    """User + system CPU seconds of process ``pid``'s live threads by thread name (threads
    sharing a name are summed; names are cut to 15 characters by the kernel), from
    ``/proc/<pid>/task``; empty if the process is gone.

    >>> sum(thread_cpu(os.getpid()).values()) >= 0
    True
    """
    out: dict[str, float] = {}
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            name, _, seconds = _parse_stat((task / "stat").read_text())
        except OSError:
            continue  # the thread ended
        out[name] = out.get(name, 0.0) + seconds
    return out


def _parse_stat(stat: str) -> tuple[str, int, float]:
    """``(command, process group id, user + system CPU seconds)`` from the text of a
    ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat`` file."""
    end = stat.rindex(")")  # the command may itself hold ")" and spaces
    fields = stat[end + 2 :].split()  # after "pid (command) "
    return (
        stat[stat.index("(") + 1 : end],
        int(fields[2]),
        (int(fields[11]) + int(fields[12])) / _TICKS,
    )


def process_usage(pid: int) -> tuple[int, float] | None:
    """``(resident bytes, CPU seconds)`` of process ``pid``, ``None`` if it is gone.

    >>> rss, cpu = process_usage(os.getpid())
    >>> rss > 0 and cpu >= 0
    True
    """
    try:
        statm = (_PROC / str(pid) / "statm").read_text().split()
    except OSError:
        return None
    stat = process_stat(pid)
    return None if stat is None else (int(statm[1]) * _PAGE, stat[1])


class ApiProcessCollector(Collector):
    """Reports the summed memory and CPU of the API's processes (see the module doc)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self._dir = multiprocess_dir

    def collect(self) -> Iterator[Metric]:
        usages = [u for u in map(process_usage, api_pids(self._dir)) if u is not None]
        if not usages:
            return
        yield GaugeMetricFamily(
            "flywheel_api_resident_memory_bytes",
            "Resident memory of the API's processes (workers and their supervisor), summed",
            value=sum(rss for rss, _ in usages),
        )
        yield CounterMetricFamily(
            "flywheel_api_cpu_seconds",
            "User and system CPU time of the API's live processes, summed",
            value=sum(seconds for _, seconds in usages),
        )
        yield GaugeMetricFamily("flywheel_api_processes", "Live processes of the API", len(usages))
