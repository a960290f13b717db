"""Item rebuy rates and the repeat term's item part: bounded counts, the smoothed logit, and
lists that put the items people buy again above the ones they buy once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_aware import RepeatAwareStrategy
from online_models.repeat_counts import RepeatCounts
from online_models.repeat_term import RepeatTerm
from online_models.strategies import OnlineMFStrategy


def test_logit_is_the_smoothed_rate_against_the_overall_rate() -> None:
    rates = ItemRebuyRates(prior=2.0)
    for rebuy in (False, True, True):
        rates.add("milk", rebuy)
    rates.add("cake", False)
    overall = (2 + 1) / (4 + 2)
    milk = (2 + 2.0 * overall) / (3 + 2.0)
    cake = (0 + 2.0 * overall) / (1 + 2.0)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    got = rates.logits(["milk", "cake", "never-bought"])
    np.testing.assert_allclose(
        got, [logit(milk) - logit(overall), logit(cake) - logit(overall), 0.0], rtol=1e-6
    )


def test_counts_are_bounded_and_the_least_recently_bought_item_goes() -> None:
    rates = ItemRebuyRates(max_items=2, prior=1.0)
    for item in ("a", "b", "a", "c"):  # c evicts b, the least recently bought
        rates.add(item, True)
    assert list(rates.entries) == ["a", "c"]
    assert rates.entries["a"] == [2, 2]
    assert rates.purchases == 4 and rates.rebuys == 4  # totals keep the evicted purchases
    with pytest.raises(ValueError):
        ItemRebuyRates(max_items=0)


def test_term_adds_the_weighted_logit_and_needs_the_rates() -> None:
    counts = RepeatCounts()
    counts.add("milk", 1.0, 0)
    rates = ItemRebuyRates()
    rates.add("milk", True)
    term = RepeatTerm(weight=2.0, offset=-1.0, rebuy_weight=3.0)
    assert term.active and RepeatTerm(rebuy_weight=1.0).active
    _, values = term.values(counts, rates)
    expected = 2 * math.log(2) - 1 + 3 * float(rates.logits(["milk"])[0])
    np.testing.assert_allclose(values, [expected], rtol=1e-6)
    with pytest.raises(ValueError, match="rebuy"):
        term.values(counts)


def test_rebuy_weight_lifts_the_items_other_users_buy_again() -> None:
    """Two items the user bought once each; others rebuy one and never the other."""
    strategy = RepeatAwareStrategy(
        OnlineMFStrategy(n_factors=4, seed=1, learning_rate=0.0), RepeatTerm(), 50
    )
    for u in range(20):  # every other user buys milk twice, cake once
        for item in ("milk", "milk", "cake"):
            strategy.learn(f"u{u}", item, "purchase", u)
    strategy.learn("ann", "cake", "purchase", 100)
    strategy.learn("ann", "milk", "purchase", 100)
    assert strategy.rebuy.entries["milk"] == [41, 20] and strategy.rebuy.entries["cake"] == [21, 0]
    terms = [RepeatTerm(weight=1.0, rebuy_weight=w) for w in (4.0, -4.0)]
    lifted, sunk = strategy.recommend_terms(["ann"], 1, None, terms)
    assert lifted == [["milk"]] and sunk == [["cake"]]
