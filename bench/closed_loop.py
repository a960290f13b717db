"""Closed-loop benchmark: simulated shoppers against the whole stack, CTR per arm over time.

``python -m bench.closed_loop [--quick] [--minutes M]`` (or ``python -m bench.run_all --only
flywheel``) starts a fresh local stack (Tansu broker, Redis, Prometheus) on free ports, the
job and the API with default settings plus a 50/50 A/B experiment between the ``online_mf``
and ``trending`` arms (:data:`EXPERIMENT`; ``--no-ab``: none), waits for both, then runs
:class:`~connectors.simulator.Simulator` (default :class:`~connectors.shoppers.SimConfig`)
at :data:`RATE` visits/s for 10 minutes (``--quick``: 4). It writes the plot
``bench/results/flywheel_ctr.png`` and these keys into ``bench/results/latest.json``:

- ``flywheel.ctr_ratio_personal_vs_trending``: CTR of the ``online_mf`` arm / CTR of the
  ``trending`` arm over the second half of the run;
- ``flywheel.ctr_<arm>_second_half``, ``flywheel.lists_<arm>_second_half``,
  ``flywheel.in_tastes_<arm>_second_half`` (share of shown items in the shopper's hidden
  tastes), and the run's size (visits, events, shoppers, items, duration, rate, errors).

With the experiment, shoppers are split by a keyed hash and counted intent-to-treat, so both
arms hold the same mix of new and returning shoppers. Without it (``--no-ab``,
``flywheel.mode`` = ``strategy``) the arm is the strategy the API chose from the user's state,
and the ratio compares returning shoppers (personal lists) with first visits (trending): see
:mod:`connectors.simulator`. Logs and the full results JSON go to ``var/bench/flywheel-<time>/``.
Everything started is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    Results,
    Scrape,
    format_table,
    machine_info,
    merge_results,
    say,
)
from connectors.api_client import HttpApiClient
from connectors.shoppers import SimConfig
from connectors.simulate import api_url, ctr_line, save_run, wait_for_api
from connectors.simulator import PERSONAL_ARM, TRENDING_ARM, Simulator, Visit
from deploy.job_process import JobProcess
from deploy.local_stack import LocalStack, free_port
from flywheel.settings import Settings, load_settings

__all__ = ["EXPERIMENT", "PLOT", "RATE", "run"]

EXPERIMENT = "closed-loop:ab:online_mf=50,trending=50"
"""The A/B split the job and the API run with (``FLYWHEEL_EXPERIMENT``)."""
RATE = 30.0
"""Visits per second: each is ~5 events (3 organic, 1 list impression, ~1 reaction)."""
PLOT = RESULTS_DIR / "flywheel_ctr.png"
_ROOT = Path(__file__).resolve().parent.parent
_JOB_TIMEOUT_S = 300.0


def run(quick: bool = False, minutes: float | None = None, ab: bool = True) -> Results:
    """Run the closed loop on a fresh stack; the ``flywheel.*`` results."""
    duration_s = 60.0 * (minutes if minutes is not None else 4.0 if quick else 10.0)
    var = _ROOT / "var" / "bench" / f"flywheel-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = _settings(var, EXPERIMENT if ab else "off")
    config = SimConfig()
    with LocalStack(settings) as stack:
        job = JobProcess(settings, stack.log_dir / "job.log").start()
        api = JobProcess(settings, stack.log_dir / "api.log", ("api",)).start()
        try:
            _wait_for_job(settings, job)
            base_url = api_url(settings)
            wait_for_api(base_url)
            say(f"job and API up; simulating for {duration_s:.0f} s at {RATE:g} visits/s")
            with HttpApiClient(base_url) as client:
                sim = Simulator(client, config)
                sim.run(duration_s=duration_s, rate=lambda: RATE, on_visit=_Progress(sim))
        finally:
            api.stop()
            job.stop()
            shutil.rmtree(var / "checkpoints", ignore_errors=True)
    split = "A/B 50/50" if ab else "arm = strategy (no experiment)"
    title = f"Closed loop, {split}: {config.shoppers} shoppers, {config.items} items"
    results_path, plot = save_run(sim, var / "simulator", title)
    if plot is not None:
        shutil.copyfile(plot, PLOT)
    say(f"full results {results_path}" + (f"; plot {PLOT}" if plot else ""))
    keys = _keys(sim, config, quick)
    keys["flywheel.mode"] = EXPERIMENT if ab else "strategy"
    if not ab:
        keys["flywheel.command"] = (
            f"python -m bench.closed_loop --no-ab --minutes {duration_s / 60:g}"
        )
    return keys


def _settings(var: Path, experiment: str) -> Settings:
    """Default settings on free ports, with this run's directory and ``experiment``."""
    return load_settings(
        experiment=experiment,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prometheus_port=free_port(),
        metrics_port=free_port(),
        flink_metrics_port=free_port(),
        api_port=free_port(),
        var_dir=var,
        checkpoint_dir=var / "checkpoints",
    )


def _wait_for_job(settings: Settings, job: JobProcess) -> None:
    """Until the job serves its metrics (its operators are open)."""
    deadline = time.monotonic() + _JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if not job.running:
            tail = job.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the job exited; log {job.log_path}:\n{tail}")
        try:
            Scrape.fetch(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout_s=2)
            return
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"job metrics not served after {_JOB_TIMEOUT_S:.0f} s")


class _Progress:
    """One progress line per minute of simulation."""

    def __init__(self, sim: Simulator) -> None:
        self.sim, self.next_s = sim, 60.0

    def __call__(self, visit: Visit) -> None:
        if visit.at_s >= self.next_s:
            self.next_s += 60.0
            report = self.sim.report()
            last = self.sim.timeline.totals(since_s=visit.at_s - 60.0)
            line = ctr_line(report, last)
            say(f"{visit.at_s:5.0f} s, {report.visits:,} visits, last minute: {line}")


def _keys(sim: Simulator, config: SimConfig, quick: bool) -> Results:
    report = sim.report()
    out: Results = {
        "flywheel.ctr_ratio_personal_vs_trending": _rounded(report.ratio),
        "flywheel.duration_s": round(report.elapsed_s, 1),
        "flywheel.rate_visits_per_s": RATE,
        "flywheel.visits": report.visits,
        "flywheel.events_sent": report.events_sent,
        "flywheel.errors": report.errors,
        "flywheel.shoppers": report.shoppers,
        "flywheel.items": config.items,
        "flywheel.categories": config.categories,
        "flywheel.date": time.strftime("%Y-%m-%d"),
        "flywheel.command": "python -m bench.run_all --only flywheel" + " --quick" * quick,
    }
    for arm in (PERSONAL_ARM, TRENDING_ARM):
        counts = report.second_half.get(arm)
        if counts is not None:
            out[f"flywheel.ctr_{arm}_second_half"] = _rounded(counts.ctr)
            out[f"flywheel.in_tastes_{arm}_second_half"] = _rounded(counts.relevance)
            out[f"flywheel.lists_{arm}_second_half"] = counts.lists
    return out


def _rounded(value: float) -> float:
    return value if math.isnan(value) else round(value, 4)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.flywheel``: run, merge into latest.json, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 minutes instead of 10")
    parser.add_argument("--minutes", type=float, help="simulation length in minutes")
    parser.add_argument("--no-ab", action="store_true", help="no experiment: arm = strategy")
    args = parser.parse_args(argv)
    command = "python -m bench.closed_loop " + " ".join(argv if argv is not None else sys.argv[1:])
    new = machine_info(command.strip())
    new.update(run(quick=args.quick, minutes=args.minutes, ab=not args.no_ab))
    merge_results(new)
    print(format_table(new), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
