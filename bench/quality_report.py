"""The report parts of :mod:`bench.quality`: synthetic ground truth, the bar chart and the
repeat-term frontier.

**Frontier.** Tuning a repeat term ranks a whole grid of terms on the tuning slice; each gives
an HR@K and a first-time HR@K. :func:`plot_frontier` draws, per model, the terms no other term
beats on both (``tuning_frontier`` in the run's ``chosen_params``) with the model's plain
ranking and the chosen term marked: what each first-time level costs each model in HR.

**Ground truth.** A synthetic user picks a category from their hidden taste (or, with
probability ``explore``, any category) and then an item by its popularity within the
category, so the chance that user u's next event is on item i is::

    P(i | u) = ((1 - explore) * taste_u(cat(i)) + explore / n_categories) * P(i | cat(i))

``P(i | cat)`` is estimated from the item frequencies of the stream itself. For a sample of
users, each strategy's final top-K list is scored by its share of items in the user's taste
categories (``taste_share``) and by ``oracle_ratio``: the summed ``P(i | u)`` of the list over
that of the best possible list (the K items of highest ``P(i | u)``): 1.0 is the optimum.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.common import Results, Value, say
from connectors.datasets import SyntheticShop
from online_models.evaluation import Event
from online_models.strategies import Strategy

__all__ = ["frontiers", "plot_frontier", "plot_quality", "synthetic_truth"]

_SAMPLE_USERS = 300
_MIN_EVENTS = 5


def _item_probability(
    shop: SyntheticShop, user: str, items: list[str], within: np.ndarray
) -> np.ndarray:
    """``P(i | u)`` for each of ``items`` (``within``: ``P(i | cat(i))`` aligned with items)."""
    taste = shop.taste(user)
    cats = [shop.item_category(i) for i in items]
    pick = np.array([taste.get(c, 0.0) for c in cats])
    return ((1 - shop.explore) * pick + shop.explore / shop.n_categories) * within


def synthetic_truth(
    shop: SyntheticShop,
    events: Sequence[Event],
    strategies: Mapping[str, Strategy],
    dataset: str,
    k: int,
) -> Results:
    """``quality.<dataset>.<strategy>.truth.taste_share@K`` and ``.truth.oracle_ratio@K``."""
    counts = Counter(e.item for e in events)
    items = sorted(counts)
    freq = np.array([counts[i] for i in items], dtype=np.float64)
    cat_total: Counter[str] = Counter()
    for item, n in counts.items():
        cat_total[shop.item_category(item)] += n
    within = freq / np.array([cat_total[shop.item_category(i)] for i in items])
    index = {item: j for j, item in enumerate(items)}
    active = Counter(e.user for e in events)
    users = sorted(u for u, n in active.items() if n >= _MIN_EVENTS)[:_SAMPLE_USERS]
    truth = {u: _item_probability(shop, u, items, within) for u in users}
    best = {u: float(np.sort(p)[-k:].sum()) for u, p in truth.items()}
    out: Results = {}
    for name, strategy in strategies.items():
        lists = strategy.recommend(users, k, None)
        share, ratio = [], []
        for user, ranked in zip(users, lists, strict=True):
            taste = shop.taste(user)
            share.append(np.mean([shop.item_category(i) in taste for i in ranked]))
            mass = sum(truth[user][index[i]] for i in ranked if i in index)
            ratio.append(mass / best[user])
        out[f"quality.{dataset}.{name}.truth.taste_share@{k}"] = round(float(np.mean(share)), 4)
        out[f"quality.{dataset}.{name}.truth.oracle_ratio@{k}"] = round(float(np.mean(ratio)), 4)
    say(f"ground truth over {len(users)} users with >= {_MIN_EVENTS} events")
    return out


def plot_quality(results: Mapping[str, Value], dataset: str, k: int, path: Path) -> Path | None:
    """Grouped bars of HR@K, NDCG@K and first-time HR@K of every strategy with figures under
    ``quality.<dataset>.`` in ``results`` (the merged results file); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not importable: no plot")
        return None
    names, series = _series(results, dataset, k)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(names)), 4.5))
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        xs = np.arange(len(names)) + (j - (len(series) - 1) / 2) * width
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("prequential score (higher is better)")
    scored = results.get(f"quality.{dataset}.online_mf.scored")
    ax.set_title(
        f"Prequential quality on {dataset} ({scored:,} scored events)"
        if isinstance(scored, int)
        else f"Prequential quality on {dataset}"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", framealpha=1.0)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_BASELINES = ("popularity", "cooccurrence", "river_biasedmf", "river_funkmf")
_ONLINE = ("online_mf_plain", "online_mf")
_SCHEDULES = ("batch_hourly", "batch_6h", "batch_daily")


def _plot_order(name: str) -> tuple[int, int, str]:
    """Baselines, then the online MF (plain, then ours), then the batch models by schedule
    (each followed by its repeat variants), ``batch_best`` last; anything else after.

    >>> sorted(["batch_best", "online_mf", "batch_6h_repeat", "popularity", "batch_6h"],
    ...        key=_plot_order)
    ['popularity', 'online_mf', 'batch_6h', 'batch_6h_repeat', 'batch_best']
    """
    for group, names in enumerate((_BASELINES, _ONLINE)):
        if name in names:
            return group, names.index(name), name
    for rank, schedule in enumerate(_SCHEDULES):
        if name == schedule or name.startswith(f"{schedule}_"):
            return 2, rank, name
    return (3, 0, name) if name == "batch_best" else (4, 0, name)


def _series(
    results: Mapping[str, Value], dataset: str, k: int
) -> tuple[list[str], dict[str, list[float]]]:
    """Strategies with an HR@K under ``quality.<dataset>.``, and their bars by label."""
    prefix, metric = f"quality.{dataset}.", f".hr@{k}"
    names = sorted(
        (
            key[len(prefix) : -len(metric)]
            for key in results
            if key.startswith(prefix) and key.endswith(metric) and key.count(".") == 3
        ),
        key=_plot_order,
    )
    labels = (
        (f"HR@{k}", f"hr@{k}"),
        (f"NDCG@{k}", f"ndcg@{k}"),
        (f"HR@{k}, first-time pairs", f"hr@{k}_first_time"),
    )
    series = {
        label: [float(results.get(f"{prefix}{n}.{key}", 0.0)) for n in names]
        for label, key in labels
    }
    return names, series


_FRONTIER_SOURCES = (
    ("online_mf", "repeat"),
    ("batch_6h_repeat", "batch_repeat"),
    ("batch_6h_repeat_matched", "batch_repeat"),
)


def frontiers(results: Mapping[str, Value], dataset: str) -> dict[str, dict[str, object]]:
    """Per strategy with a recorded repeat-term tuning: its ``chosen_params`` repeat entry
    (``tuning_frontier``, ``tuning_hr``, ``tuning_plain_hr``, ...), from the run of that
    strategy or else from the dataset's complete run."""
    out: dict[str, dict[str, object]] = {}
    for name, part in _FRONTIER_SOURCES:
        keys = [f"quality.{dataset}.{name}.chosen_params"]
        if not name.endswith("_matched"):  # a complete run tunes no matched variant
            keys.append(f"quality.{dataset}.chosen_params")
        for key in keys:
            raw = results.get(key)
            if isinstance(raw, str):
                entry = json.loads(raw).get(part) or {}
                if entry.get("tuning_frontier"):
                    out[name] = entry
                    break
    return out


def plot_frontier(results: Mapping[str, Value], dataset: str, k: int, path: Path) -> Path | None:
    """HR@K against first-time HR@K of the repeat terms on the tuning slice, per model (see
    the module docstring); None without matplotlib or recorded frontiers."""
    found = frontiers(results, dataset)
    if not found:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not importable: no plot")
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn: list[object] = []
    for name, entry in found.items():
        points = np.asarray(entry["tuning_frontier"], dtype=np.float64)
        if entry["tuning_frontier"] in drawn:  # same model and grid, another floor: its choice
            chosen = (float(entry["tuning_first_time_hr"]), float(entry["tuning_hr"]))  # type: ignore[arg-type]
            ax.plot(*chosen, marker="*", markersize=14, linestyle="none", label=f"{name}: chosen")
            continue
        drawn.append(entry["tuning_frontier"])
        (line,) = ax.plot(points[:, 0], points[:, 1], marker=".", label=f"{name}: repeat terms")
        plain = (float(entry["tuning_plain_first_time_hr"]), float(entry["tuning_plain_hr"]))  # type: ignore[arg-type]
        chosen = (float(entry["tuning_first_time_hr"]), float(entry["tuning_hr"]))  # type: ignore[arg-type]
        ax.plot(*plain, marker="s", color=line.get_color(), linestyle="none")
        ax.plot(*chosen, marker="*", markersize=14, color=line.get_color(), linestyle="none")
    ax.plot([], [], marker="s", color="grey", linestyle="none", label="plain model (its floor)")
    ax.plot([], [], marker="*", markersize=12, color="grey", linestyle="none", label="chosen")
    ax.set_xlabel(f"first-time HR@{k} (tuning slice)")
    ax.set_ylabel(f"HR@{k} (tuning slice)")
    ax.set_title(f"Repeat terms on the tuning slice of {dataset}: HR against discovery")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", framealpha=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
