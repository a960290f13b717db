"""Trending: the vectorised top of a large catalogue equals the plain sort."""

from __future__ import annotations

import random

from online_models.popularity import WindowedPopularity


def test_top_of_a_large_catalogue_matches_a_full_sort_with_ties_by_id() -> None:
    rng = random.Random(5)
    pop = WindowedPopularity(window_s=86400)
    for i in range(20_000):  # few distinct weights: many ties at the cut
        pop.add(f"i{rng.randrange(5000)}", rng.choice([0.5, 1.0, 2.0]), 10**12 + i)
    everything = sorted(pop._totals.items(), key=lambda kv: (-kv[1], kv[0]))
    assert pop.top(30) == [(item, round(score, 6)) for item, score in everything[:30]]
    assert len(pop) > 8 * 30  # the vectorised path ran
