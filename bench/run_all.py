"""Entry of ``make bench``: ``python -m bench.run_all [--quick] [--full] [--only NAME]``.

Runs, in this order: the model benchmarks (:mod:`bench.model`), clustered vs exact retrieval
(:mod:`bench.retrieval`), the pipeline benchmark (:mod:`bench.pipeline`), the same with the
item-to-item lists off (``pipeline_core``), at Flink parallelism 2 (``pipeline_p2``, keys
``pipeline.p2.*``), on a standalone cluster of two TaskManagers (``pipeline_cluster2``, keys
``pipeline.cluster2.*``: :mod:`deploy.local_cluster`) and there with the item-to-item lists
off (``pipeline_core_cluster2``, keys ``pipeline_core.cluster2.*``), the serving benchmark
(:mod:`bench.serving`: Redis lookups and the API under load), the memory benchmark
(:mod:`bench.memory`), the TaskManager memory of the running job
(:mod:`bench.taskmanager_memory`, ``tm_memory``) and the closed-loop shopper simulation
(:mod:`bench.closed_loop`, ``flywheel``: 10 minutes, ``--quick`` 4). Merges their figures
into ``bench/results/latest.json`` (keys this run did not recompute are kept), plots
freshness against offered load into ``bench/results/freshness_vs_load.png`` and the model,
serving and memory figures (:mod:`bench.plots`) when matplotlib is importable, and prints a
table.
Figures measured before a failure or Ctrl-C are still saved.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from bench import (
    closed_loop,
    memory,
    model,
    pipeline,
    plots,
    retrieval,
    serving,
    taskmanager_memory,
)
from bench.common import (
    LATEST,
    RESULTS_DIR,
    Results,
    Value,
    format_table,
    machine_info,
    merge_results,
    say,
)

__all__ = ["main", "plot_freshness"]

BENCHMARKS = (
    "model", "retrieval", "pipeline", "pipeline_core", "pipeline_p2", "pipeline_cluster2",
    "pipeline_core_cluster2", "serving", "memory", "tm_memory", "flywheel",
)  # fmt: skip
# pipeline variant -> (key prefix, job setting overrides, TaskManagers: 0 = local mini-cluster)
_VARIANTS: dict[str, tuple[str, dict[str, int], int]] = {
    "pipeline_core": ("pipeline_core", {"neighbour_context": 0}, 0),
    "pipeline_p2": ("pipeline.p2", {"parallelism": 2}, 0),
    "pipeline_cluster2": ("pipeline.cluster2", {}, 2),
    "pipeline_core_cluster2": ("pipeline_core.cluster2", {"neighbour_context": 0}, 2),
}
PLOT = RESULTS_DIR / "freshness_vs_load.png"
_FRESHNESS_KEY = re.compile(
    r"^(pipeline|pipeline_core|pipeline\.p2|pipeline\.cluster2|pipeline_core\.cluster2)"
    r"\.freshness_p(50|99)_ms_at_(\d+)eps$"
)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events, shorter steps")
    parser.add_argument("--full", action="store_true", help="also a 1M-item catalogue (model)")
    parser.add_argument(
        "--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)"
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C, so every started process is stopped on the way out."""
    raise KeyboardInterrupt


def plot_freshness(results: Mapping[str, Value], path: Path = PLOT) -> Path | None:
    """Freshness p50/p99 against offered load as a PNG; None without matplotlib or data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        say("matplotlib is not importable: no plot")
        return None
    series = _freshness_series(results)
    if not series["p50"]:
        return None
    variants = (
        (_freshness_series(results, "pipeline_core"), "item-to-item lists off", "s", ":"),
        (_freshness_series(results, "pipeline.p2"), "parallelism 2", "^", "-."),
        (_freshness_series(results, "pipeline.cluster2"), "2 TaskManagers", "v", "--"),
        (
            _freshness_series(results, "pipeline_core.cluster2"),
            "2 TaskManagers, lists off",
            "D",
            (0, (1, 1)),
        ),
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for q in ("p50", "p99"):
        rates = sorted(series[q])
        ax.plot(rates, [series[q][r] for r in rates], marker="o", label=f"{q}, default job")
    for other, name, marker, style in variants:
        for q in ("p50", "p99"):
            rates = sorted(other[q])
            if rates:
                label = f"{q}, {name}"
                ax.plot(rates, [other[q][r] for r in rates], marker=marker, linestyle=style,
                        label=label)  # fmt: skip
    if series["processed"]:
        rates, right = sorted(series["processed"]), ax.twinx()
        right.plot(rates, [series["processed"][r] for r in rates], color="black", marker="x",
                   linewidth=0.8, alpha=0.6)  # fmt: skip
        right.set_ylabel("processed events/s, default job (black, x)")
        right.set_ylim(bottom=0)
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("freshness (ms): Redis write - Kafka record time")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(
        f"Flywheel freshness vs load ({results.get('meta.nproc', '?')} cores, "
        f"{results.get('pipeline.catalogue_items', '?')} items, parallelism 1 unless noted)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _freshness_series(
    results: Mapping[str, Value], section: str = "pipeline"
) -> dict[str, dict[int, float]]:
    """``p50``, ``p99`` (ms) and ``processed`` (events/s) by offered rate, for ``section``."""
    series: dict[str, dict[int, float]] = {"p50": {}, "p99": {}, "processed": {}}
    for key, value in results.items():
        match = _FRESHNESS_KEY.match(key)
        if match and match.group(1) == section and isinstance(value, int | float):
            series[f"p{match.group(2)}"][int(match.group(3))] = float(value)
    for rate in series["p50"]:
        processed = results.get(f"{section}.processed_eps_at_{rate}eps")
        if isinstance(processed, int | float):
            series["processed"][rate] = float(processed)
    return series


def _run(selected: Sequence[str], args: argparse.Namespace, new: Results) -> None:
    """Run the selected benchmarks in :data:`BENCHMARKS` order, saving after each one."""
    quick = args.quick
    steps: dict[str, tuple[str, Callable[[], object]]] = {
        "model": ("model benchmarks (no Flink)",
                  lambda: new.update(model.run(quick=quick, full=args.full))),
        "retrieval": ("clustered vs exact top-N retrieval (no Flink)",
                      lambda: new.update(retrieval.run(quick=quick))),
        "pipeline": ("pipeline benchmark (broker + Redis + Flink job)",
                     lambda: pipeline.run(quick=quick, into=new)),
        "pipeline_core": ("pipeline benchmark, item-to-item lists off (keys pipeline_core.*)",
                          lambda: _variant("pipeline_core", quick, new)),
        "pipeline_p2": ("pipeline benchmark at Flink parallelism 2 (keys pipeline.p2.*)",
                        lambda: _variant("pipeline_p2", quick, new)),
        "pipeline_cluster2": ("pipeline benchmark on a standalone cluster of 2 TaskManagers "
                              "(keys pipeline.cluster2.*)",
                              lambda: _variant("pipeline_cluster2", quick, new)),
        "pipeline_core_cluster2": ("pipeline benchmark on 2 TaskManagers, item-to-item lists "
                                   "off (keys pipeline_core.cluster2.*)",
                                   lambda: _variant("pipeline_core_cluster2", quick, new)),
        "serving": ("serving benchmark (Redis lookups, recommendation API)",
                    lambda: serving.run(quick=quick, into=new)),
        "memory": ("memory benchmark (Flink state, Redis, item table)",
                   lambda: memory.run(quick=quick, into=new)),
        "tm_memory": ("TaskManager memory (heap and RSS of the running job per item and user)",
                      lambda: taskmanager_memory.run(quick=quick, into=new)),
        "flywheel": ("closed loop: simulated shoppers against the API, job and Redis",
                     lambda: new.update(closed_loop.run(quick=quick))),
    }  # fmt: skip
    for name in BENCHMARKS:
        if name in selected:
            banner, step = steps[name]
            say(f"=== {banner} ===")
            try:
                step()
            finally:
                merge_results(new)


def _variant(name: str, quick: bool, new: Results) -> None:
    """One pipeline variant of :data:`_VARIANTS`: the pipeline benchmark with its job setting
    overrides, in the local mini-cluster or on a standalone cluster of one-slot TaskManagers
    (own JVM and Python interpreter each) at that parallelism, its keys renamed from
    ``pipeline.*`` to the variant's prefix (e.g. ``pipeline_core.*`` with
    ``neighbour_context=0``, ``pipeline.p2.*`` at parallelism 2)."""
    prefix, overrides, taskmanagers = _VARIANTS[name]
    results: Results = {}
    try:
        pipeline.run(quick=quick, into=results, overrides=overrides, taskmanagers=taskmanagers)
    finally:
        new.update({f"{prefix}.{k.split('.', 1)[1]}": v for k, v in results.items()})
        if "neighbour_context" in overrides:
            new[f"{prefix}.neighbour_context"] = overrides["neighbour_context"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status (130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    selected = args.only or list(BENCHMARKS)
    new = machine_info(" ".join(["python -m bench.run_all", *argv]))
    status = 0
    try:
        _run(selected, args, new)
    except KeyboardInterrupt:
        say("interrupted: keeping the figures measured so far")
        status = 130
    finally:
        merged = merge_results(new)
        drawn = [p for p in (plot_freshness(merged), *plots.draw_all(merged)) if p]
        print(format_table(new), flush=True)
        say(f"results merged into {LATEST}; plots: " + ", ".join(p.name for p in drawn))
    return status


if __name__ == "__main__":
    sys.exit(main())
