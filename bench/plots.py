"""PNG plots of the model, serving and memory benchmarks, drawn from the merged results.

``python -m bench.plots`` redraws them from ``bench/results/latest.json``; ``make bench``
(:mod:`bench.run_all`) draws them after every run. Each plot uses only the keys its benchmark
writes and is skipped (``None``) when they are missing or matplotlib is not importable:

- ``model_topn.png``: top-N lists per second against catalogue size for the compiled exact
  kernel (both thread counts) and the BLAS baseline, next to the list rate the same run's
  plain float32 matrix product would allow (``model.topn_per_s_<n> / model.gemm_ratio_<n>``);
  and MF updates per second by catalogue size.
- ``serving_latency.png``: the API's latency percentiles against offered load and the Redis
  list lookup's percentiles from a second process.
- ``memory_per_user.png``: what a user's Flink state holds, part by part, and the user's Redis
  bytes, for every stream of the memory benchmark.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.common import LATEST, RESULTS_DIR, Value, say

__all__ = ["draw_all", "plot_memory", "plot_model", "plot_serving"]

SIZES = (("10k", 10_000), ("100k", 100_000), ("1m", 1_000_000))
STATE_PARTS = (
    "event_ids", "purchased", "repeats", "categories", "recent", "context", "vector", "windows",
)  # fmt: skip
STREAMS = (
    ("completejourney", "Complete Journey"),
    ("completejourney_groceries", "Complete Journey,\ngroceries config"),
    ("synthetic", "synthetic shop"),
)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not importable: no plot")
        return None
    return plt


def _number(results: Mapping[str, Value], key: str) -> float | None:
    value = results.get(key)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _save(plt: Any, fig: Any, path: Path, results: Mapping[str, Value], name: str) -> Path:
    """Title ``fig`` with its benchmark's command and date, write it to ``path``."""
    date = str(results.get(f"{name}.date", ""))[:16]
    fig.suptitle(f"python -m bench.run_all --only {name}  ({date})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labelled_bars(ax: Any, bars: Sequence[tuple[str, float]], color: str, fmt: str) -> None:
    """Vertical bars with their values written on top."""
    ax.bar([label for label, _ in bars], [v for _, v in bars], color=color)
    for k, (_, v) in enumerate(bars):
        ax.annotate(format(v, fmt), (k, v), ha="center", va="bottom", fontsize=8)


def plot_model(results: Mapping[str, Value], path: Path) -> Path | None:
    """Top-N lists/s and MF updates/s against catalogue size; ``None`` without the keys."""
    series: dict[str, list[tuple[int, float]]] = {}
    threads = results.get("model.topn_threads", 2)
    labels = {
        f"exact kernel, {threads} threads": "model.topn_per_s_{}",
        "exact kernel, 1 thread": "model.topn_per_s_1thread_{}",
        f"BLAS product + partial sort, {threads} threads": "model.topn_blas_per_s_{}",
    }
    for label, pattern in labels.items():
        series[label] = [
            (n, v) for tag, n in SIZES if (v := _number(results, pattern.format(tag))) is not None
        ]
    bound = []
    for tag, n in SIZES:
        rate, ratio = (_number(results, f"model.{k}_{tag}") for k in ("topn_per_s", "gemm_ratio"))
        if rate is not None and ratio is not None:
            bound.append((n, rate / ratio))
    updates = [(n, v) for tag, n in SIZES if (v := _number(results, f"model.updates_per_s_{tag}"))]
    if not bound or (plt := _pyplot()) is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(2, 1))
    xs, ys = zip(*bound, strict=True)
    left.plot(xs, ys, "k--", marker="s", label=f"plain float32 GEMM rate, {threads} threads")
    for (label, points), marker in zip(series.items(), "o^v", strict=True):
        if points:
            px, py = zip(*points, strict=True)
            left.plot(px, py, marker=marker, label=label)
    left.set(xscale="log", yscale="log", xlabel="catalogue items",
             ylabel="top-50 lists per second (32 factors)",
             title="Exact top-N against the matrix-product rate")  # fmt: skip
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    _labelled_bars(right, [(f"{n:,}", v) for n, v in updates], "tab:green", ",.0f")
    right.set(xlabel="catalogue items", ylabel="MF updates per second (one core)",
              title="Online MF updates")  # fmt: skip
    return _save(plt, fig, path, results, "model")


def plot_serving(results: Mapping[str, Value], path: Path) -> Path | None:
    """API latency against offered load, and the Redis lookup percentiles; ``None`` without
    the keys."""
    loads = sorted(
        int(k.removeprefix("serving.api_p99_ms_at_").removesuffix("rps"))
        for k in results
        if k.startswith("serving.api_p99_ms_at_") and k.endswith("rps")
    )
    redis = [(q, _number(results, f"serving.redis_lookup_{q}_ms")) for q in ("p50", "p90", "p99")]
    if (not loads and redis[2][1] is None) or (plt := _pyplot()) is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(2, 1))
    for q, marker in (("p50", "o"), ("p90", "^"), ("p99", "s")):
        points = [(r, _number(results, f"serving.api_{q}_ms_at_{r}rps")) for r in loads]
        shown = [(r, v) for r, v in points if v is not None]
        if shown:
            left.plot(*zip(*shown, strict=True), marker=marker, label=f"API {q}")
    workers = results.get("serving.api_workers", "?")
    left.set(xlabel="offered requests per second", ylabel="ms",
             title=f"Serving API: GET list ({workers} workers)")  # fmt: skip
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    _labelled_bars(right, [(q, v) for q, v in redis if v is not None], "tab:red", ".3f")
    rate = _number(results, "serving.redis_lookups_per_s")
    right.set(ylabel="ms", title="Redis list lookup" + (f" ({rate:,.0f}/s)" if rate else ""))
    return _save(plt, fig, path, results, "serving")


def plot_memory(results: Mapping[str, Value], path: Path) -> Path | None:
    """Flink state per user by part, and Redis bytes per user, per stream; ``None`` without
    the keys."""
    streams = [
        (name, label)
        for name, label in STREAMS
        if _number(results, f"memory.{name}.flink_state_bytes_mean") is not None
    ]
    if not streams or (plt := _pyplot()) is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=(3, 2))
    labels = [label for _, label in streams]
    start = [0.0] * len(streams)
    for part in STATE_PARTS:
        widths = [
            _number(results, f"memory.{name}.state_bytes_{part}_mean") or 0.0 for name, _ in streams
        ]
        if any(widths):
            left.barh(labels, widths, left=start, label=part)
            start = [a + b for a, b in zip(start, widths, strict=True)]
    for k, (name, _) in enumerate(streams):
        total = _number(results, f"memory.{name}.flink_state_bytes_mean") or 0.0
        left.annotate(f" {total:,.0f} B", (start[k], k), va="center", fontsize=8)
    left.set_xlim(0, max(start) * 1.25)
    left.set(xlabel="bytes per user (mean)", title="Flink state per user, by part")
    left.legend(fontsize=7, ncol=2)
    left.invert_yaxis()
    lists = [_number(results, f"memory.{n}.redis_list_bytes_mean") or 0.0 for n, _ in streams]
    feats = [_number(results, f"memory.{n}.redis_features_bytes_mean") or 0.0 for n, _ in streams]
    right.barh(labels, lists, label="home list")
    right.barh(labels, feats, left=lists, label="features")
    right.set(xlabel="bytes per user (MEMORY USAGE, mean)", title="Redis per user")
    right.legend(fontsize=7)
    right.invert_yaxis()
    return _save(plt, fig, path, results, "memory")


def draw_all(results: Mapping[str, Value], into: Path = RESULTS_DIR) -> list[Path]:
    """Every plot of this module whose keys ``results`` holds; the paths written."""
    drawn = [
        plot_model(results, into / "model_topn.png"),
        plot_serving(results, into / "serving_latency.png"),
        plot_memory(results, into / "memory_per_user.png"),
    ]
    return [p for p in drawn if p is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw the plots from ``bench/results/latest.json`` (or the file given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m bench.plots [RESULTS_JSON]\n\n" + (__doc__ or ""))
        return 0
    source = Path(args[0]) if args else LATEST
    results = orjson.loads(source.read_bytes())
    for path in draw_all(results, source.parent):
        say(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
