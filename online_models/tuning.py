"""Hyper-parameter search on an early slice of the stream, never on the part evaluated later.

The stream's first ``fraction`` of *time* is the tuning slice; inside it, the first half (by
time) only warms a candidate up and the second half is scored prequentially. The events after
the slice are the evaluation part: :func:`tuning_cutoff` gives the timestamp where it starts,
which the final evaluation passes as ``score_from_ts`` (the slice is then learnt, not scored).

The search is random over a discrete space with a fixed budget: the first trial is the
defaults (the first value of each choice list), the others are distinct random draws from the
grid (the whole grid when it is smaller than the budget), seeded.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from online_models.evaluation import DEFAULT_SCORE_ACTIONS, Event, evaluate
from online_models.strategies import Strategy

__all__ = [
    "ONLINE_MF_SPACE",
    "Trial",
    "sample_grid",
    "tune",
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
