"""``flywheel simulate``: the shopper simulator against a running API, with progress and results.

:func:`main` waits for the API (``GET /healthz``), runs a :class:`~connectors.simulator.
Simulator` for ``--duration`` seconds at ``--rate`` visits per second, prints a progress line
every ``--every`` seconds, then a table per arm and the CTR ratio, and writes
``results.json`` and ``ctr_by_arm.png`` into ``--out`` (:func:`save_run`, also used by the
benchmark and by ``flywheel run --traffic simulator``). Nothing is kept beyond the
simulator's own state.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from connectors.api_client import ApiError, HttpApiClient
from connectors.ctr_timeline import ArmCounts, plot_ctr
from connectors.shoppers import SimConfig
from connectors.simulator import PERSONAL_ARM, TRENDING_ARM, SimReport, Simulator, Visit
from flywheel.settings import Settings

__all__ = ["api_url", "ctr_line", "main", "save_run", "wait_for_api"]

RESULTS_NAME, PLOT_NAME = "results.json", "ctr_by_arm.png"


def api_url(settings: Settings) -> str:
    """The API's base URL from the settings (a wildcard bind address is reached on loopback).

    >>> from flywheel.settings import load_settings
    >>> api_url(load_settings(api_host="0.0.0.0", api_port=8100))
    'http://127.0.0.1:8100'
    """
    host = settings.api_host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.api_port}"


def wait_for_api(base_url: str, timeout_s: float = 60.0) -> None:
    """Return once ``GET /healthz`` answers 200; raise :class:`ApiError` after ``timeout_s``."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=2.0)
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(0.5)
    raise ApiError(0, f"the API at {base_url} is not healthy after {timeout_s:.0f} s ({last})")


def ctr_line(report: SimReport, recent: dict[str, ArmCounts] | None = None) -> str:
    """One line: CTR and lists per arm (of ``recent`` when given, else the whole run).

    >>> from connectors.ctr_timeline import ArmCounts
    >>> r = SimReport(60, 100, 900, 0, 40, {"trending": ArmCounts(100, 1000, 50)}, {}, math.nan)
    >>> ctr_line(r)
    'CTR trending 0.050 (100 lists)'
    """
    counts = report.totals if recent is None else recent
    arms = [f"{arm} {c.ctr:.3f} ({c.lists:,} lists)" for arm, c in sorted(counts.items())]
    return "CTR " + (" | ".join(arms) if arms else "-")


def save_run(sim: Simulator, out_dir: Path, title: str) -> tuple[Path, Path | None]:
    """Write ``results.json`` and (when matplotlib is importable) ``ctr_by_arm.png``."""
    report = sim.report()
    half_s = report.elapsed_s / 2
    results: dict[str, Any] = {
        "config": asdict(sim.config),
        "elapsed_s": round(report.elapsed_s, 1),
        "visits": report.visits,
        "events_sent": report.events_sent,
        "errors": report.errors,
        "shoppers": report.shoppers,
        "totals": _arms_json(report.totals),
        "second_half": _arms_json(report.second_half),
        "ctr_ratio_personal_vs_trending": None if math.isnan(report.ratio) else report.ratio,
        "timeline": sim.timeline.to_dict(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_NAME
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    plot_path = out_dir / PLOT_NAME
    drawn = plot_ctr(sim.timeline, plot_path, title, half_s=half_s, until_s=report.elapsed_s)
    return results_path, plot_path if drawn else None


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``flywheel simulate``; the exit status (1 when the API fails)."""
    given = {
        "shoppers": args.shoppers,
        "items": args.items,
        "categories": args.categories,
        "organic_per_visit": args.organic,
        "min_requests": args.min_requests,
        "bucket_s": args.bucket,
        "seed": args.seed,
    }
    config = SimConfig(**{name: value for name, value in given.items() if value is not None})
    base_url = args.api or api_url(settings)
    print(f"waiting for the API at {base_url} ...", flush=True)
    wait_for_api(base_url)
    with HttpApiClient(base_url) as client:
        sim = Simulator(client, config)
        progress = _Progress(sim, args.every)
        print(
            f"simulating {config.shoppers:,} shoppers over {config.items:,} items for "
            f"{args.duration:g} s at {args.rate:g} visits/s (Ctrl-C stops early)",
            flush=True,
        )
        try:
            sim.run(duration_s=args.duration, rate=lambda: args.rate, on_visit=progress)
        except KeyboardInterrupt:
            print("interrupted: reporting the visits made so far", file=sys.stderr)
        except ApiError as exc:
            print(f"flywheel simulate: {exc}", file=sys.stderr)
            return 1
    report = sim.report()
    print(_table(report))
    title = f"Closed loop: {config.shoppers:,} simulated shoppers, {config.items:,} items"
    results, plot = save_run(sim, Path(args.out), title)
    print(f"results {results}" + (f", plot {plot}" if plot else " (matplotlib missing: no plot)"))
    return 0


class _Progress:
    """Prints one line every ``every_s`` seconds of the run."""

    def __init__(self, sim: Simulator, every_s: float) -> None:
        self.sim, self.every_s, self.next_s = sim, every_s, every_s

    def __call__(self, visit: Visit) -> None:
        if visit.at_s < self.next_s:
            return
        self.next_s += self.every_s
        report = self.sim.report()
        print(
            f"{visit.at_s:6.0f} s | {report.visits:,} visits | {report.events_sent:,} events"
            f" | {report.shoppers:,} shoppers | errors {report.errors} | {ctr_line(report)}",
            flush=True,
        )


def _arms_json(counts: dict[str, ArmCounts]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for arm, c in counts.items():
        rates = {"ctr": c.ctr, "conversion": c.conversion, "relevance": c.relevance}
        out[arm] = {**asdict(c), **{k: None if math.isnan(v) else v for k, v in rates.items()}}
    return out


def _table(report: SimReport) -> str:
    head = f"{'arm':<12} {'span':<12} {'lists':>8} {'shown':>9} {'CTR':>7} {'conv.':>7}"
    rows = [f"{head} {'in tastes':>9}"]
    for span, counts in (("whole run", report.totals), ("second half", report.second_half)):
        for arm, c in sorted(counts.items()):
            row = f"{arm:<12} {span:<12} {c.lists:>8,} {c.impressions:>9,}"
            rows.append(f"{row} {c.ctr:>7.3f} {c.conversion:>7.4f} {c.relevance:>9.3f}")
    rows.append(
        f"CTR {PERSONAL_ARM} / CTR {TRENDING_ARM}, second half: {report.ratio:.2f}"
        f" ({report.visits:,} visits, {report.events_sent:,} events, {report.errors} errors)"
    )
    return "\n".join(rows)
