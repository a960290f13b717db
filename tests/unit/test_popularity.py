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


def test_per_category_top_follows_recategorisation_and_expiry() -> None:
    pop = WindowedPopularity(window_s=3600)
    pop.add("milk", 3.0, 0, "dairy")
    pop.add("cheese", 2.0, 0, "dairy")
    pop.add("soap", 4.0, 0, "home")
    assert pop.take_changed_categories() == {"dairy", "home"}
    assert pop.take_filed_items() == {"milk": "dairy", "cheese": "dairy", "soap": "home"}
    assert pop.top_in("dairy", 1) == [("milk", 3.0)]
    pop.add("cheese", 1.0, 1000)  # no category given: stays filed under dairy
    assert pop.category_of("cheese") == "dairy"
    assert pop.take_changed_categories() == {"dairy"}
    pop.add("cheese", 1.0, 2000, "deli")  # re-filed under its new category
    assert pop.top_in("dairy", 5) == [("milk", 3.0)]
    assert pop.top_in("deli", 5) == [("cheese", 4.0)]
    assert pop.take_changed_categories() == {"dairy", "deli"}
    assert pop.take_filed_items() == {"cheese": "deli"}
    pop.add("bread", 1.0, 3 * 3600 * 1000, "bakery")  # everything else expired
    assert sorted(pop.categories()) == ["bakery"]
    assert pop.top_in("dairy", 5) == [] and pop.category_of("milk") is None
    assert pop.take_changed_categories() == {"bakery", "dairy", "deli", "home"}


def test_categories_survive_a_state_round_trip() -> None:
    pop = WindowedPopularity(window_s=3600)
    pop.add("milk", 3.0, 0, "dairy")
    pop.add("soap", 4.0, 0)
    again = WindowedPopularity(3600).load(pop.to_dict())
    assert again.top_in("dairy", 5) == [("milk", 3.0)]
    assert again.category_of("soap") is None and again.top(2) == pop.top(2)
