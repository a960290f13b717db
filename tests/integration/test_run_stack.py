"""``flywheel run``: the whole demo (stack, job, traffic, status lines) as a user starts it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.local_stack import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600.0  # start-up (bounded at 300 s by the launcher) + 60 s + shutdown
RATE = re.compile(r"\|\s+([0-9.]+) ev/s accepted \|")
SHOPPER = re.compile(r"^  shopper u\d+: (online_mf|trending), written -?[0-9.]+ s ago: \S+ ", re.M)


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different ports that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def run_env(tmp_path: Path, ports: list[int]) -> dict[str, str]:
    """The process environment without FLYWHEEL_* variables, plus ours: free ports, tmp dirs."""
    kafka, redis_port, prometheus, metrics, flink_metrics, api = ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    return env | {
        "FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "FLYWHEEL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FLYWHEEL_PROMETHEUS_PORT": str(prometheus),
        "FLYWHEEL_METRICS_PORT": str(metrics),
        "FLYWHEEL_FLINK_METRICS_PORT": str(flink_metrics),
        "FLYWHEEL_API_PORT": str(api),
        "FLYWHEEL_VAR_DIR": str(tmp_path),
        "FLYWHEEL_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }


def run_to_end(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; past the timeout, SIGTERM it (it stops its children) and fail the test."""
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"`flywheel run` still running after {RUN_TIMEOUT_S:.0f} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def processes_mentioning(needle: str, ports: list[int]) -> list[str]:
    """Other live processes whose command line or environment names ``needle`` or a port."""
    port_re = re.compile(r"(?<![0-9])(" + "|".join(map(str, ports)) + r")(?![0-9])")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if needle in cmdline or needle in environ or port_re.search(cmdline):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_run_streams_traffic_reports_status_and_leaves_nothing_behind(tmp_path: Path) -> None:
    ports = distinct_free_ports(6)
    cmd = [sys.executable, "-m", "flywheel.cli", "run", "--traffic", "synthetic"]
    cmd += ["--rate", "200", "--duration", "60"]

    result = run_to_end(cmd, run_env(tmp_path, ports))

    report = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, report
    rates = [float(rate) for rate in RATE.findall(result.stdout)]
    assert rates and max(rates) > 0, report
    assert SHOPPER.search(result.stdout), report
    assert "Summary: sent " in result.stdout, report
    api_log = (tmp_path / "logs" / "api.log").read_text()
    assert "Uvicorn running" in api_log, f"the API did not start:\n{api_log[-2000:]}"
    deadline = time.monotonic() + 15
    while (left := processes_mentioning(str(tmp_path), ports)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}\n{report}"
