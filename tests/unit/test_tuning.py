"""The repeat term is tuned on the early slice under a first-time floor."""

from __future__ import annotations

import random

import pytest

from online_models.evaluation import Event
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_term import RepeatTerm
from online_models.strategies import OnlineMFStrategy
from online_models.tuning import tune_repeat

SPACE = {
    "half_life_days": [30.0],
    "weight": [1.0, 4.0],
    "offset": [-2.0, 0.0],
    "discovery_slots": [0, 3],
}


@pytest.fixture(scope="module")
def rebuys() -> list[Event]:
    """Shoppers who mostly rebuy their five staples and sometimes try one of 200 items."""
    rng = random.Random(3)
    staples = {u: rng.sample(range(200), 5) for u in range(40)}
    events = []
    for t in range(4000):
        user = rng.randrange(40)
        item = rng.choice(staples[user]) if rng.random() < 0.7 else rng.randrange(200)
        events.append(Event(f"u{user}", f"i{item}", "purchase", 1_700_000_000_000 + t * 60_000))
    return events


def _make(half_life_s: float) -> RepeatAwareStrategy:
    return RepeatAwareStrategy(OnlineMFStrategy(n_factors=8, seed=1), RepeatTerm(), 50, half_life_s)


def test_the_floor_decides_between_repeats_and_discovery(rebuys: list[Event]) -> None:
    own = tune_repeat(_make, rebuys, SPACE, fraction=0.5, batch=32)
    assert own.first_time_hr >= own.plain_first_time_hr and own.hr >= own.plain_hr
    free = tune_repeat(_make, rebuys, SPACE, fraction=0.5, batch=32, floor=0.0)
    assert free.term.active and free.half_life_s == 30 * 86_400
    assert free.hr > own.hr  # rebuys win HR here ...
    assert free.first_time_hr < free.plain_first_time_hr  # ... at the cost of new items
    best_new = tune_repeat(_make, rebuys, SPACE, fraction=0.5, batch=32, floor=1.0)
    assert own.first_time_hr <= best_new.first_time_hr < 1.0  # unreachable: most new hits


def test_frontier_holds_every_undominated_term_and_the_chosen_one(rebuys: list[Event]) -> None:
    choice = tune_repeat(_make, rebuys, SPACE, fraction=0.5, batch=32)
    frontier = choice.frontier
    assert len(frontier) >= 2
    firsts = [f for f, _ in frontier]
    hrs = [h for _, h in frontier]
    assert firsts == sorted(firsts, reverse=True) and hrs == sorted(hrs)  # trade one for other
    # the chosen term is the best HR among the frontier points at or above the floor
    allowed = [h for f, h in frontier if f >= choice.plain_first_time_hr]
    assert choice.hr == max(allowed)
