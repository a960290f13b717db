"""Hyper-parameter search on an early slice of the stream, never on the part evaluated later.

The stream's first ``fraction`` of *time* is the tuning slice; inside it, the first half (by
time) only warms a candidate up and the second half is scored prequentially. The events after
the slice are the evaluation part: :func:`tuning_cutoff` gives the timestamp where it starts,
which the final evaluation passes as ``score_from_ts`` (the slice is then learnt, not scored).

The search is random over a discrete space with a fixed budget: the first trial is the
defaults (the first value of each choice list), the others are distinct random draws from the
grid (the whole grid when it is smaller than the budget), seeded.

**The repeat term** (:func:`tune_repeat`) is chosen on the same slice by a constrained rule,
since on groceries HR@K alone rewards lists that only repeat the past: the term with the
highest HR@K among those whose first-time HR@K (events on items new to the user) is at least
that of the plain model. The plain model is ranked in the same pass, so the floor and the
candidates see the same learnt state; one pass per counts half-life ranks the whole grid.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from online_models.evaluation import DEFAULT_SCORE_ACTIONS, Event, evaluate, evaluate_variants
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_term import RepeatTerm
from online_models.strategies import Strategy

__all__ = [
    "ONLINE_MF_SPACE",
    "REPEAT_SPACE",
    "RepeatChoice",
    "Trial",
    "pareto",
    "sample_grid",
    "tune",
    "tune_repeat",
    "tuning_cutoff",
]

ONLINE_MF_SPACE: dict[str, list[Any]] = {
    "n_factors": [32, 16, 64],
    "learning_rate": [0.05, 0.02, 0.1, 0.2],
    "l2": [0.002, 0.0005, 0.01],
    "n_negatives": [4, 2, 8, 16],
    "action_weights": [
        {"view": 0.5, "click": 1.0, "add_to_cart": 2.0, "purchase": 4.0},
        {"view": 0.25, "click": 1.0, "add_to_cart": 2.0, "purchase": 2.0},
        {"view": 0.0, "click": 1.0, "add_to_cart": 4.0, "purchase": 8.0},
        {"view": 0.5, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0},
    ],
}
"""The online-MF search space; the first value of each list is the current default."""

REPEAT_SPACE: dict[str, list[float]] = {
    "half_life_days": [30.0, 90.0],
    "weight": [1.0, 2.0, 4.0, 8.0, 16.0],
    "offset": [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0],
    "discovery_slots": [0, 3, 5, 7],
    "rebuy_weight": [0.0],
}
"""The repeat-term grid (every point is ranked). ``rebuy_weight`` (the item rebuy rates, which
the streaming job serves too) is 0 only in this default grid, to keep its size; the Complete
Journey run widens it with ``--repeat-space`` (docs/benchmarks.md). Counts
without decay (half-life 0) are left out: on Complete Journey's tuning slice their lists
drifted towards repeats as histories grew (first-time HR@10 over the plain model's fell by up
to 9 % between the slice's early and late halves, e.g. 0.92 to 0.84 for weight 4, offset -4),
so a term chosen on the slice would fall below the floor later; with 30-day decay the same
terms moved by 2 % at most."""


@dataclass(frozen=True)
class Trial:
    """One configuration and its tuning score (HR@K on the scored half of the slice)."""

    params: dict[str, Any]
    score: float
    seconds: float


def tuning_cutoff(events: Sequence[Event], fraction: float = 0.2) -> int:
    """The timestamp ending the first ``fraction`` of the stream's time span.

    >>> tuning_cutoff([Event("u", "i", "click", 0), Event("u", "i", "click", 100)], 0.2)
    20
    """
    first, last = events[0].ts, events[-1].ts
    return first + int((last - first) * fraction)


def sample_grid(space: Mapping[str, Sequence[Any]], budget: int, seed: int) -> list[dict[str, Any]]:
    """The defaults, then up to ``budget - 1`` distinct random grid points.

    >>> sample_grid({"a": [1, 2], "b": [3]}, budget=5, seed=0)
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    """
    names = list(space)
    grid = list(itertools.product(*(range(len(space[n])) for n in names)))
    rest = grid[1:]
    if budget - 1 < len(rest):
        rest = random.Random(seed).sample(rest, budget - 1)
    return [
        {n: space[n][i] for n, i in zip(names, point, strict=True)} for point in [grid[0], *rest]
    ]


def tune(
    make: Callable[[dict[str, Any]], Strategy],
    space: Mapping[str, Sequence[Any]],
    events: Sequence[Event],
    *,
    budget: int = 12,
    seed: int = 0,
    fraction: float = 0.2,
    k: int = 10,
    batch: int = 256,
    exclude_seen: bool = False,
    score_actions: Sequence[str] = tuple(DEFAULT_SCORE_ACTIONS),
    log: Callable[[str], None] | None = None,
) -> list[Trial]:
    """Score ``budget`` configurations on the tuning slice; the trials, best first."""
    cutoff = tuning_cutoff(events, fraction)
    middle = tuning_cutoff(events, fraction / 2)
    head = [e for e in events if e.ts < cutoff]
    trials = []
    for params in sample_grid(space, budget, seed):
        report = evaluate(
            make(params),
            head,
            k=k,
            batch=batch,
            score_actions=score_actions,
            exclude_seen=exclude_seen,
            score_from_ts=middle,
        )
        trial = Trial(params, report.slice("all").hr, report.seconds)
        if log:
            log(f"tuning {trial.score:.4f} in {trial.seconds:.0f} s: {params}")
        trials.append(trial)
    return sorted(trials, key=lambda t: -t.score)


@dataclass(frozen=True)
class RepeatChoice:
    """The chosen repeat term, its counts' half-life and its tuning figures (HR@K, first-time
    HR@K) next to the plain model's."""

    term: RepeatTerm
    half_life_s: float
    hr: float
    first_time_hr: float
    plain_hr: float
    plain_first_time_hr: float
    frontier: tuple[tuple[float, float], ...] = ()
    """Every ranked term's (first-time HR@K, HR@K) that no other term beats on both, by
    falling first-time HR: what each first-time level costs in HR on the tuning slice."""


def tune_repeat(
    make: Callable[[float], RepeatAwareStrategy],
    events: Sequence[Event],
    space: Mapping[str, Sequence[float]] = REPEAT_SPACE,
    *,
    fraction: float = 0.2,
    k: int = 10,
    batch: int = 256,
    exclude_seen: bool = False,
    score_actions: Sequence[str] = tuple(DEFAULT_SCORE_ACTIONS),
    log: Callable[[str], None] | None = None,
    floor: float | None = None,
) -> RepeatChoice:
    """The best repeat term on the tuning slice under the first-time floor (module docstring).

    ``make(half_life_s)`` builds the strategy to rank (its base learns as usual). The floor is
    the plain ranking's first-time HR@K unless ``floor`` gives another one (e.g. another
    model's, to compare two models at the same first-time level); when no term reaches a
    given floor, the term with the highest first-time HR@K is chosen.
    """
    cutoff = tuning_cutoff(events, fraction)
    middle = tuning_cutoff(events, fraction / 2)
    head = [e for e in events if e.ts < cutoff]
    grid = itertools.product(
        space["weight"], space["offset"], space["discovery_slots"], space.get("rebuy_weight", [0])
    )
    terms = [RepeatTerm(float(w), float(o), int(d), float(r)) for w, o, d, r in grid]
    variants = [RepeatTerm(), *terms]
    names = [str(t) for t in variants]
    best: RepeatChoice | None = None
    closest: RepeatChoice | None = None  # highest first-time HR, if no term meets the floor
    points: list[tuple[float, float]] = []
    for days in space["half_life_days"]:
        strategy = make(days * 86_400)
        reports = evaluate_variants(
            strategy, functools.partial(strategy.recommend_terms, terms=variants),
            names, head, k, batch, score_actions, exclude_seen, middle,
        )  # fmt: skip
        plain = reports[0]
        plain_hr, plain_first = plain.slice("all").hr, plain.slice("first_time").hr
        wanted = plain_first if floor is None else floor
        for term, report in zip(variants, reports, strict=True):
            hr, first = report.slice("all").hr, report.slice("first_time").hr
            points.append((first, hr))
            half_life = days * 86_400 if term.active else 0.0
            choice = RepeatChoice(term, half_life, hr, first, plain_hr, plain_first)
            if first >= wanted and (best is None or hr > best.hr):
                best = choice
            if closest is None or first > closest.first_time_hr:
                closest = choice
        if log:
            met = sum(r.slice("first_time").hr >= wanted for r in reports)
            log(f"repeat term, half-life {days:g} d: {met} of {len(reports)} meet the "
                f"first-time floor {wanted:.4f}; best so far {best}")  # fmt: skip
    chosen = best or closest  # without a given floor the plain ranking always meets it
    assert chosen is not None
    return dataclasses.replace(chosen, frontier=pareto(points))


def pareto(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """The (first-time HR, HR) points no other point beats on both, by falling first-time HR.

    >>> pareto([(0.2, 0.1), (0.1, 0.3), (0.1, 0.2), (0.05, 0.25), (0.0, 0.4)])
    ((0.2, 0.1), (0.1, 0.3), (0.0, 0.4))
    """
    out: list[tuple[float, float]] = []
    for first, hr in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not out or hr > out[-1][1]:
            out.append((first, hr))
    return tuple(out)
