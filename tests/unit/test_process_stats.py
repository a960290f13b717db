"""The API's process memory and CPU, found and read from /proc at scrape time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.process_stats import ApiProcessCollector, api_pids, process_usage, thread_cpu


def _values(collector: ApiProcessCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_one_process_reports_itself() -> None:
    values = _values(ApiProcessCollector())
    rss, _ = process_usage(os.getpid()) or (0, 0.0)
    assert values["flywheel_api_processes"] == 1
    assert 0.5 * rss < values["flywheel_api_resident_memory_bytes"] < 2 * rss
    assert values["flywheel_api_cpu_seconds_total"] > 0


def test_workers_are_found_by_their_metric_files_and_the_dead_are_skipped(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        for pid in (worker.pid, gone.pid):
            (tmp_path / f"counter_{pid}.db").write_bytes(b"")
            (tmp_path / f"histogram_{pid}.db").write_bytes(b"")
        (tmp_path / "notes.txt").write_text("not a metrics file")
        pids = api_pids(str(tmp_path))
        assert worker.pid in pids and os.getpid() in pids and gone.pid not in pids
        alone = _values(ApiProcessCollector())
        together = _values(ApiProcessCollector(str(tmp_path)))
        worker_rss = (process_usage(worker.pid) or (0, 0.0))[0]
        assert together["flywheel_api_processes"] == len(pids)
        assert together["flywheel_api_resident_memory_bytes"] >= (
            alone["flywheel_api_resident_memory_bytes"] + 0.5 * worker_rss
        )
    finally:
        worker.kill()
        worker.wait()


def test_a_process_that_is_gone_has_no_usage() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process_usage(gone.pid) is None
    assert thread_cpu(gone.pid) == {}


_BURN = """
import threading, time
burnt = threading.Event()
def burn(seconds, then=None):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    if then:
        then.set()
        time.sleep(60)  # the thread stays alive: /proc lists live threads only
worker = threading.Thread(target=burn, args=(0.6, burnt), daemon=True)
worker.start(); burn(0.2); burnt.wait()
print("done", flush=True)
time.sleep(60)
"""


def test_thread_cpu_adds_up_the_process_threads_by_name() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        by_name = thread_cpu(child.pid)
        name = Path(f"/proc/{child.pid}/comm").read_text().strip()
        assert set(by_name) == {name}  # Python threads keep the process's name, summed
        assert 0.7 <= by_name[name] <= (process_usage(child.pid) or (0, 0.0))[1] + 0.01
    finally:
        child.kill()
        child.wait()
