"""The report parts of :mod:`bench.quality`: synthetic ground truth and the bar chart.

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

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.common import Results, Value, say
from connectors.datasets import SyntheticShop
from online_models.evaluation import Event
from online_models.strategies import Strategy

__all__ = ["plot_quality", "synthetic_truth"]

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
