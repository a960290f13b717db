"""Prequential quality of every strategy on one stream: ``python -m bench.quality``.

::

    python -m bench.quality                                   # completejourney, full stream
    python -m bench.quality --dataset synthetic --limit 100000
    python -m bench.quality --dataset otto --path train.jsonl --limit 2000000
    python -m bench.quality --dataset events.csv --user-col household --item-col sku --ts-col time
    python -m bench.quality --strategies online_mf online_mf_plain \
        --online-mf-params '{"n_factors": 32}' \
        --repeat-params '{"weight": 4, "offset": -3, "discovery_slots": 2, "half_life_s": 2592000}'
    python -m bench.quality --repeat-space '{"rebuy_weight": [0, 1, 2]}'   # item rebuy rates too

Steps: load the stream; tune online MF (and, for fairness, the batch ALS's confidence scale
and regularisation) on the first ``--tune-fraction`` of its time, then the repeat term of
``online_mf`` and of ``batch_*_repeat`` on the same slice (highest HR@10 whose first-time
HR@10 is at least the plain model's; see :mod:`online_models.tuning`); then run every
strategy over the whole stream, one after the other, scoring only the events after the tuning
slice; print a table; merge the figures into ``bench/results/latest.json`` as
``quality.<dataset>.<strategy>.<metric>``; draw ``bench/results/quality_<dataset>.png`` from
every strategy in that file.

Strategies: ``popularity``, ``cooccurrence``, ``river_biasedmf``, ``river_funkmf``,
``online_mf`` (ours, as the job serves it: online MF + bias + the repeat term with the items'
rebuy rates, :mod:`online_models.repeat_aware`), ``online_mf_plain`` (the online MF alone), and
the batch ALS schedules: ``batch_6h``, ``batch_daily`` (``batch_hourly`` on request: too slow
for the full completejourney stream on 2 cores) and ``batch_6h_repeat`` (6-hourly ALS with the
same kind of repeat term, tuned by the same rule). ``batch_best`` repeats the batch variant
with the best HR@10, repeat variants included. For the synthetic shop it also compares the
final lists with the hidden tastes (:mod:`bench.quality_report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import LATEST, RESULTS_DIR, Results, merge_results, say
from bench.quality_report import plot_frontier, plot_quality, synthetic_truth
from connectors.datasets import (
    ColumnMapping,
    SyntheticShop,
    completejourney_events,
    otto_events,
    read_table,
)
from online_models.batch_als import BatchALSStrategy
from online_models.cooccurrence import CoOccurrenceStrategy
from online_models.evaluation import (
    DEFAULT_SCORE_ACTIONS,
    Event,
    PrequentialReport,
    evaluate,
    evaluate_variants,
    events_from_dicts,
)
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_term import RepeatTerm
from online_models.strategies import (
    DAY_S,
    OnlineMFStrategy,
    PopularityStrategy,
    RiverMFStrategy,
    Strategy,
)
from online_models.tuning import (
    ONLINE_MF_SPACE,
    REPEAT_SPACE,
    tune,
    tune_repeat,
    tuning_cutoff,
)

__all__ = ["main"]

ALS_SPACE: dict[str, list[Any]] = {"alpha": [1.0, 10.0, 0.25], "regularization": [0.05, 0.5]}
_PLAIN_SCHEDULES = {"batch_hourly": 3600, "batch_6h": 6 * 3600, "batch_daily": DAY_S}
SCHEDULES = {**_PLAIN_SCHEDULES, **{f"{n}_repeat": s for n, s in _PLAIN_SCHEDULES.items()}}
COLUMNS = (
    "hr@10", "ndcg@10", "coverage", "hr@10_first_time", "ndcg@10_first_time",
    "hr@10_repeat", "ndcg@10_repeat",
)  # fmt: skip
_RUN_FACTS = frozenset(
    {"command", "date", "events", "events_scored_from_ts", "exclude_seen", "chosen_params",
     "run_s", "loadavg_1m_at_end"}
)  # fmt: skip
SYNTHETIC_USERS, SYNTHETIC_ITEMS, SYNTHETIC_RATE_PER_S = 2000, 5000, 0.5


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    _dataset_options(p)
    p.add_argument("--batch", type=int, default=256, help="micro-batch size (1: exact)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--score-actions",
        nargs="+",
        default=sorted(DEFAULT_SCORE_ACTIONS),
        help="actions whose events are scored (all are learnt)",
    )
    p.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out items the user had (default: off for groceries, on for otto)",
    )
    p.add_argument("--window-days", type=float, default=7.0, help="popularity window")
    p.add_argument(
        "--schedules",
        nargs="+",
        default=["batch_6h", "batch_daily", "batch_6h_repeat"],
        choices=sorted(SCHEDULES),
        help="batch retrain schedules to run",
    )
    p.add_argument("--strategies", nargs="+", help="run only these (default: all)")
    p.add_argument("--tune-budget", type=int, default=12, help="online-MF configurations")
    p.add_argument("--tune-fraction", type=float, default=0.2, help="share of time for tuning")
    for model in ("online-mf", "als"):
        p.add_argument(f"--{model}-params", type=json.loads, help="JSON: skip tuning, use these")
    for model in ("repeat", "batch-repeat"):
        p.add_argument(
            f"--{model}-params",
            type=json.loads,
            help="JSON weight, offset, discovery_slots, half_life_s: skip tuning, use these",
        )
    p.add_argument(
        "--repeat-space",
        type=json.loads,
        help="JSON: override keys of the repeat-term grid (online_models.tuning.REPEAT_SPACE) "
        "for both models, e.g. '{\"rebuy_weight\": [0, 1, 2]}' to tune the item rebuy rates",
    )
    p.add_argument(
        "--batch-repeat-floor",
        type=float,
        help="tune the batch repeat terms under this first-time HR floor (e.g. online_mf_plain's "
        "on the tuning slice) instead of the batch model's own; names them batch_*_repeat_matched",
    )
    p.add_argument("--no-save", action="store_true", help="print only: no JSON, no plot")
    p.add_argument("--plot-only", action="store_true", help="redraw the chart from the JSON")
    return p


def _dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", default="completejourney", help="completejourney|otto|synthetic|PATH"
    )
    p.add_argument("--path", help="the OTTO train.jsonl file (--dataset otto)")
    for field in ("user", "item", "ts", "action"):
        p.add_argument(f"--{field}-col", help=f"column of the {field} (--dataset PATH)")
    p.add_argument("--limit", type=int, help="keep the first N events")


def load_events(args: argparse.Namespace) -> tuple[str, list[Event], SyntheticShop | None]:
    """The dataset's name, its events (time-ordered) and, for synthetic data, the shop."""
    name, shop = args.dataset, None
    if name == "completejourney":
        events = events_from_dicts(completejourney_events(limit=args.limit))
    elif name == "synthetic":
        shop = SyntheticShop(SYNTHETIC_USERS, SYNTHETIC_ITEMS, rate_per_s=SYNTHETIC_RATE_PER_S)
        events = events_from_dicts(shop.events(args.limit or 200_000))
    elif name == "otto":
        if not args.path:
            raise SystemExit("--dataset otto needs --path train.jsonl")
        events = _first(events_from_dicts(otto_events(args.path)), args.limit)
    else:
        cols = {f: getattr(args, f"{f}_col") for f in ("user", "item", "ts", "action")}
        mapping = ColumnMapping(**{f: c for f, c in cols.items() if c})
        events = _first(events_from_dicts(read_table(name, mapping)), args.limit)
        name = Path(name).name.split(".")[0]
    return name, events, shop


def _first(events: list[Event], limit: int | None) -> list[Event]:
    return events if limit is None else events[:limit]


def factories(
    args: argparse.Namespace, chosen: dict[str, Any]
) -> dict[str, Callable[[], Strategy]]:
    """Every strategy of the comparison, by name, as a constructor."""
    window = int(args.window_days * DAY_S)
    mf, als = chosen["online_mf"], chosen["batch_als"]
    made: dict[str, Callable[[], Strategy]] = {
        "popularity": lambda: PopularityStrategy(window_s=window),
        "cooccurrence": lambda: CoOccurrenceStrategy(window_s=window),
        "river_biasedmf": lambda: RiverMFStrategy("biased", window_s=window),
        "river_funkmf": lambda: RiverMFStrategy("funk", window_s=window),
        "online_mf": lambda: _with_repeats(
            OnlineMFStrategy(window_s=window, **mf), chosen["repeat"], "online_mf"
        ),
        "online_mf_plain": lambda: OnlineMFStrategy(window_s=window, name="online_mf_plain", **mf),
    }  # fmt: skip
    for name in args.schedules:
        batch = functools.partial(
            BatchALSStrategy, retrain_every_s=SCHEDULES[name], window_s=window, name=name, **als
        )
        if name.endswith("_repeat"):
            name = _repeat_name(args, name)
            made[name] = functools.partial(_with_repeats, batch(), chosen["batch_repeat"], name)
        else:
            made[name] = batch
    return made


def _repeat_name(args: argparse.Namespace, schedule: str) -> str:
    """A batch repeat schedule's strategy name: ``_matched`` when tuned under a given floor."""
    return schedule + ("_matched" if args.batch_repeat_floor is not None else "")


def _with_repeats(
    base: OnlineMFStrategy | BatchALSStrategy, params: dict[str, Any], name: str
) -> RepeatAwareStrategy:
    """``base`` ranked with the repeat term ``params`` (``RepeatTerm`` fields + half_life_s)."""
    fields = {f.name for f in dataclasses.fields(RepeatTerm)}
    term = RepeatTerm(**{k: v for k, v in params.items() if k in fields})
    half_life = float(params.get("half_life_s", 0.0))
    return RepeatAwareStrategy(base, term, half_life_s=half_life, name=name)


def _selected(args: argparse.Namespace, name: str) -> bool:
    return not args.strategies or name in args.strategies


def tune_models(args: argparse.Namespace, events: list[Event], exclude: bool) -> dict[str, Any]:
    """Chosen parameters (``online_mf``, ``batch_als``, and the repeat terms ``repeat`` of
    ``online_mf`` and ``batch_repeat`` of the batch repeat variants), each from the tuning
    slice only, unless given on the command line or not needed by this run."""
    common: dict[str, Any] = {
        "fraction": args.tune_fraction,
        "k": args.k,
        "batch": args.batch,
        "exclude_seen": exclude,
        "score_actions": args.score_actions,
        "log": say,
    }
    window = int(args.window_days * DAY_S)
    common["space"] = {**REPEAT_SPACE, **(args.repeat_space or {})}
    mf = args.online_mf_params
    mf_needed = _selected(args, "online_mf") or _selected(args, "online_mf_plain")
    plain_common = {k: v for k, v in common.items() if k != "space"}
    if mf is None and mf_needed and args.tune_budget > 0:
        make_mf = functools.partial(OnlineMFStrategy, window_s=window)
        mf = tune(
            lambda p: make_mf(**p), ONLINE_MF_SPACE, events, budget=args.tune_budget,
            **plain_common,
        )[0].params  # fmt: skip
    mf = mf or {}
    als = args.als_params
    if als is None and any(_selected(args, s) for s in args.schedules):
        make_als = functools.partial(
            BatchALSStrategy, min(SCHEDULES[s] for s in args.schedules), window_s=window
        )
        als = tune(lambda p: make_als(**p), ALS_SPACE, events, budget=6, **plain_common)[0].params
    als = als or {}
    repeat = args.repeat_params
    if repeat is None and _selected(args, "online_mf"):
        repeat = _tune_term(
            lambda h: _with_repeats(
                OnlineMFStrategy(window_s=window, **mf), {"half_life_s": h}, "online_mf"
            ),
            events, common,
        )  # fmt: skip
    batch_repeat = args.batch_repeat_params
    repeats = [s for s in args.schedules if s.endswith("_repeat")]
    repeats = [s for s in repeats if _selected(args, _repeat_name(args, s))]
    if batch_repeat is None and repeats:
        every = min(SCHEDULES[s] for s in repeats)
        batch_repeat = _tune_term(
            lambda h: _with_repeats(
                BatchALSStrategy(every, window_s=window, **als), {"half_life_s": h}, "b"
            ),
            events, {**common, "floor": args.batch_repeat_floor},
        )  # fmt: skip
    return {
        "online_mf": mf,
        "batch_als": als,
        "repeat": repeat or {},
        "batch_repeat": batch_repeat or {},
    }


def _tune_term(
    make: Callable[[float], RepeatAwareStrategy], events: list[Event], common: dict[str, Any]
) -> dict[str, Any]:
    """The repeat term chosen on the tuning slice, as ``--repeat-params`` JSON fields, with
    the tuning figures (``tuning_*``) for the record."""
    choice = tune_repeat(make, events, **common)
    return {
        **dataclasses.asdict(choice.term),
        "half_life_s": choice.half_life_s,
        "tuning_hr": round(choice.hr, 5),
        "tuning_first_time_hr": round(choice.first_time_hr, 5),
        "tuning_plain_hr": round(choice.plain_hr, 5),
        "tuning_plain_first_time_hr": round(choice.plain_first_time_hr, 5),
        "tuning_frontier": [[round(f, 5), round(h, 5)] for f, h in choice.frontier],
    }


def run_all(
    args: argparse.Namespace,
    events: list[Event],
    made: dict[str, Callable[[], Strategy]],
    exclude: bool,
) -> tuple[dict[str, PrequentialReport], dict[str, Strategy]]:
    """Evaluate each strategy on the same events, scoring after the tuning slice. A repeat
    variant and its plain model (``online_mf`` and ``online_mf_plain``, ``batch_6h_repeat``
    and ``batch_6h``) share one pass: the model learns once and is ranked both ways, which
    gives the same figures as two runs (tests/unit/test_strategies.py) in half the time."""
    cutoff = tuning_cutoff(events, args.tune_fraction)
    common: dict[str, Any] = {
        "k": args.k,
        "batch": args.batch,
        "score_actions": args.score_actions,
        "exclude_seen": exclude,
        "score_from_ts": cutoff,
    }
    paired = {_plain_of(n): n for n in made if _plain_of(n) in made and _selected(args, n)}
    reports: dict[str, PrequentialReport] = {}
    kept: dict[str, Strategy] = {}
    for name, make in made.items():
        if not _selected(args, name) or name in paired:
            continue  # not asked for, or ranked in its repeat variant's pass
        strategy = make()
        plain = _plain_of(name)
        if isinstance(strategy, RepeatAwareStrategy) and paired.get(plain) == name:
            terms = [RepeatTerm(), strategy.term]
            lister = functools.partial(strategy.recommend_terms, terms=terms)
            pair = evaluate_variants(strategy, lister, [plain, name], events, **common)
            reports[plain], reports[name] = pair
            kept[plain] = kept[name] = strategy
        else:
            reports[name] = evaluate(strategy, events, **common)
            kept[name] = strategy
        for done in (plain, name) if plain in paired else (name,):
            m = reports[done].metrics()
            say(f"{done}: hr@{args.k} {m[f'hr@{args.k}']:.4f} in {reports[done].seconds:.0f} s")
    return reports, kept


def _plain_of(name: str) -> str:
    """The plain model a repeat variant is ranked against ("" for other strategies)."""
    if name == "online_mf":
        return "online_mf_plain"
    name = name.removesuffix("_matched")
    return name.removesuffix("_repeat") if name.endswith("_repeat") else ""


def flatten(
    dataset: str,
    reports: dict[str, PrequentialReport],
    kept: dict[str, Strategy],
    complete: bool = True,
) -> Results:
    """``quality.<dataset>.<strategy>.<metric>`` keys, and ``batch_best`` for a ``complete``
    run (after a run of some strategies :func:`main` recomputes it from the file)."""
    out: Results = {}
    for name, report in reports.items():
        for key, value in report.metrics().items():
            out[f"quality.{dataset}.{name}.{key}"] = value
        strategy = kept[name]
        if isinstance(strategy, RepeatAwareStrategy):
            strategy = strategy.base
        if isinstance(strategy, BatchALSStrategy):
            out[f"quality.{dataset}.{name}.trainings"] = strategy.trainings
            out[f"quality.{dataset}.{name}.train_s"] = round(strategy.train_seconds, 1)
    batches = [n for n in reports if n.startswith("batch_")]
    if batches and complete:
        best = max(batches, key=lambda n: reports[n].slice("all").hr)
        for key, value in reports[best].metrics().items():
            out[f"quality.{dataset}.batch_best.{key}"] = value
        out[f"quality.{dataset}.batch_best.is"] = best
    return out


def best_of_file(results: Results, dataset: str) -> Results:
    """``batch_best`` recomputed from the batch schedules in the results file (after a run of
    some strategies changed one): the schedule with the best HR@10, ``_matched`` variants
    (tuned under another model's floor) left out, as in a complete run."""
    prefix = f"quality.{dataset}."
    names = {
        key[len(prefix) :].split(".")[0]
        for key in results
        if key.startswith(prefix + "batch_") and key.endswith(".hr@10")
    }
    names = {n for n in names if n != "batch_best" and not n.endswith("_matched")}
    if not names:
        return {}
    best = max(names, key=lambda n: float(results[f"{prefix}{n}.hr@10"]))
    out: Results = {
        f"{prefix}batch_best.{key[len(prefix + best) + 1 :]}": value
        for key, value in results.items()
        if key.startswith(f"{prefix}{best}.") and key.rsplit(".", 1)[1] not in _RUN_FACTS
    }
    out[f"{prefix}batch_best.is"] = best
    return out


def table(reports: dict[str, PrequentialReport], k: int) -> str:
    """The comparison as a text table, one strategy a line."""
    cols = [c.replace("@10", f"@{k}") for c in COLUMNS]
    head = f"{'strategy':<26}" + "".join(f"{c:>19}" for c in cols) + f"{'events/s':>12}"
    lines = [head, "-" * len(head)]
    for name, report in reports.items():
        m = report.metrics()
        cells = "".join(f"{m.get(c, 0.0):>19.4f}" for c in cols)
        lines.append(f"{name:<26}{cells}{m['events_per_s']:>12,.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Tune, evaluate, print, save."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if args.plot_only:
        name = Path(args.dataset).name.split(".")[0]
        path = RESULTS_DIR / f"quality_{name}.png"
        merged = merge_results({})
        say(f"plot {plot_quality(merged, name, args.k, path)}")
        front = RESULTS_DIR / f"quality_{name}_frontier.png"
        say(f"plot {plot_frontier(merged, name, args.k, front)}")
        return 0
    started = time.perf_counter()
    dataset, events, shop = load_events(args)
    exclude = args.exclude_seen if args.exclude_seen is not None else dataset == "otto"
    say(f"{dataset}: {len(events):,} events, exclude_seen={exclude}")
    chosen = tune_models(args, events, exclude)
    say(f"chosen: {chosen}")
    reports, kept = run_all(args, events, factories(args, chosen), exclude)
    results = flatten(dataset, reports, kept, complete=not args.strategies)
    if shop is not None:
        results.update(synthetic_truth(shop, events, kept, dataset, args.k))
    cutoff = tuning_cutoff(events, args.tune_fraction)
    results.update(_meta(args, dataset, argv, len(events), cutoff, chosen, exclude, started))
    print(table(reports, args.k), flush=True)
    extra = (".truth.", ".trainings", ".train_s")
    for key in sorted(k for k in results if any(x in k for x in extra)):
        print(f"{key} = {results[key]}")
    if not args.no_save:  # a run of every strategy replaces the dataset's whole section
        section = None if args.strategies else f"quality.{dataset}."
        merged = merge_results(results, replace_prefix=section)
        if args.strategies and any(n.startswith("batch_") for n in reports):
            merged = merge_results(best_of_file(merged, dataset))
        plot = plot_quality(merged, dataset, args.k, RESULTS_DIR / f"quality_{dataset}.png")
        say(f"results merged into {LATEST}" + (f"; plot {plot}" if plot else ""))
        front = RESULTS_DIR / f"quality_{dataset}_frontier.png"
        if plot_frontier(merged, dataset, args.k, front):
            say(f"plot {front}")
    return 0


def _meta(
    args: argparse.Namespace,
    dataset: str,
    argv: list[str],
    n_events: int,
    cutoff: int,
    chosen: dict[str, Any],
    exclude: bool,
    started: float,
) -> Results:
    """Run facts: under ``quality.<dataset>.`` for a run of every strategy, else under each
    strategy run (so a partial run does not relabel the others' figures)."""
    facts: Results = {
        "command": " ".join(["python -m bench.quality", *argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "events": n_events,
        "events_scored_from_ts": cutoff,
        "exclude_seen": int(exclude),
        "chosen_params": json.dumps(chosen, sort_keys=True),
        "run_s": round(time.perf_counter() - started, 1),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    prefixes = [f"quality.{dataset}"]
    if args.strategies:
        prefixes = [f"quality.{dataset}.{name}" for name in args.strategies]
    return {f"{p}.{key}": value for p in prefixes for key, value in facts.items()}


if __name__ == "__main__":
    sys.exit(main())
