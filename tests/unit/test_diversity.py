"""MMR and the per-category cap: relevance order at lambda 0, more spread as lambda grows."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.diversity import cap_for_lambda, cap_per_category, mmr

N_CATEGORIES, PER_CATEGORY, K = 4, 10, 8


def _shop() -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str]]:
    """Items of 4 categories; vectors near their category's axis; category 0 is the most
    relevant, so a relevance-ordered top 8 is all category 0."""
    rng = np.random.default_rng(7)
    items, scores, vectors, categories = [], [], [], {}
    for c in range(N_CATEGORIES):
        for j in range(PER_CATEGORY):
            item = f"c{c}-{j}"
            items.append(item)
            scores.append(10.0 - c - j * 0.01)
            vectors.append(np.eye(N_CATEGORIES)[c] + rng.normal(0, 0.05, N_CATEGORIES))
            categories[item] = f"cat{c}"
    order = np.argsort(-np.array(scores), kind="stable")
    ranked = [items[i] for i in order]
    return ranked, np.array(scores)[order], np.array(vectors)[order], categories


def _spread(selected: list[str], categories: dict[str, str]) -> int:
    return len({categories[item] for item in selected})


def test_lambda_zero_keeps_relevance_order() -> None:
    items, scores, vectors, _ = _shop()
    assert mmr(items, scores, vectors, 0.0, K) == items[:K]


def test_category_spread_grows_with_lambda() -> None:
    items, scores, vectors, categories = _shop()
    spreads = [
        _spread(mmr(items, scores, vectors, lam, K), categories)
        for lam in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
    ]
    assert spreads[0] == 1
    assert spreads == sorted(spreads), spreads
    assert spreads[-1] == N_CATEGORIES


def test_mmr_returns_distinct_items_and_at_most_k() -> None:
    items, scores, vectors, _ = _shop()
    picked = mmr(items, scores, vectors, 0.5, K)
    assert len(picked) == K == len(set(picked))
    assert len(mmr(items[:3], scores[:3], vectors[:3], 0.5, 10)) == 3
    assert mmr([], [], np.zeros((0, 4)), 0.5, 5) == []


def test_mmr_first_pick_is_the_most_relevant_even_at_lambda_one() -> None:
    items, scores, vectors, _ = _shop()
    assert mmr(items, scores, vectors, 1.0, 1) == [items[0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lam": 1.5}, "lam"), ({"k": -1}, "k must"), ({"vectors": np.zeros((2, 3))}, "equal length")],
)
def test_mmr_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "items": ["a", "b", "c"],
        "scores": [3.0, 2.0, 1.0],
        "vectors": np.eye(3),
        "lam": 0.5,
        "k": 2,
    }
    with pytest.raises(ValueError, match=message):
        mmr(**(args | kwargs))  # type: ignore[arg-type]


def test_category_cap_spreads_and_never_shortens_the_list() -> None:
    items, _, _, categories = _shop()
    spreads = [
        _spread(cap_per_category(items, categories, cap_for_lambda(lam, K), K), categories)
        for lam in (0.0, 0.5, 0.8, 1.0)
    ]
    assert spreads == sorted(spreads) and spreads[0] == 1 and spreads[-1] == N_CATEGORIES
    assert cap_per_category(items[:3], categories, 1, 3) == items[:3]  # deferred fill the tail


def test_items_without_category_are_not_capped() -> None:
    assert cap_per_category(["x", "y", "a1", "a2"], {"a1": "A", "a2": "A"}, 1, 3) == [
        "x",
        "y",
        "a1",
    ]
