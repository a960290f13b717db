"""What the API serves per scene, from snapshots of what Redis holds."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.redis_lists import RecList
from serving.recommend import (
    ItemSignals,
    RecRequest,
    Snapshot,
    blend,
    preferred_categories,
    recommend,
    uses_trending,
)

TRENDING = [("t1", 90.0), ("t2", 80.0), ("p1", 70.0), ("t3", 60.0), ("t4", 50.0)]


def _personal(*items: str, strategy: str = "online_mf") -> RecList:
    ranked = [(item, 2.0 - i * 0.1) for i, item in enumerate(items)]
    return RecList("pseudo", "home", strategy, 1, 2, ranked)


def _snapshot(personal: RecList | None = None, features: dict[str, Any] | None = None) -> Snapshot:
    return Snapshot(personal, features, TRENDING)


def _ids(snapshot: Snapshot, request: RecRequest) -> list[tuple[str, str]]:
    return [(s.item_id, s.reason) for s in recommend(snapshot, request).items]


def test_home_serves_the_personal_list() -> None:
    served = recommend(_snapshot(_personal("p1", "p2", "p3")), RecRequest("home", 2))
    assert served.strategy == "online_mf" and not served.diversified
    assert [(s.item_id, s.score, s.reason) for s in served.items] == [
        ("p1", 2.0, "personal"),
        ("p2", 1.9, "personal"),
    ]


@pytest.mark.parametrize(
    "personal",
    [None, _personal("x", strategy="trending"), _personal()],
    ids=["no list", "cold user", "empty list"],
)
def test_cold_or_unknown_users_get_trending(personal: RecList | None) -> None:
    served = recommend(_snapshot(personal), RecRequest("home", 3))
    assert served.strategy == "trending"
    assert [(s.item_id, s.reason) for s in served.items] == [
        ("t1", "trending"),
        ("t2", "trending"),
        ("p1", "trending"),
    ]


def test_a_short_personal_list_is_padded_with_trending_without_repeats() -> None:
    assert _ids(_snapshot(_personal("p1", "p2")), RecRequest("home", 4)) == [
        ("p1", "personal"),
        ("p2", "personal"),
        ("t1", "trending"),
        ("t2", "trending"),
    ]


def test_purchased_items_are_excluded_unless_rebuys_are_allowed() -> None:
    snapshot = _snapshot(_personal("p1", "p2", "p3"), {"purchased": ["p2", "t1"]})
    assert _ids(snapshot, RecRequest("home", 3)) == [
        ("p1", "personal"),
        ("p3", "personal"),
        ("t2", "trending"),
    ]
    rebuy = RecRequest("home", 3, exclude_purchased=False)
    assert [i for i, _ in _ids(snapshot, rebuy)] == ["p1", "p2", "p3"]


def test_cart_drops_recent_and_purchased_items() -> None:
    features = {"recent": ["p1", "t1"], "purchased": ["p3"]}
    snapshot = _snapshot(_personal("p1", "p2", "p3", "p4"), features)
    request = RecRequest("cart", 3, exclude_purchased=False)  # cart drops purchases anyway
    assert _ids(snapshot, request) == [("p2", "personal"), ("p4", "personal"), ("t2", "trending")]


def test_cart_of_a_cold_user_is_trending_minus_the_cart() -> None:
    snapshot = _snapshot(None, {"recent": ["t1"], "purchased": []})
    assert _ids(snapshot, RecRequest("cart", 2)) == [("t2", "trending"), ("p1", "trending")]


def test_product_serves_trending_minus_the_item_never_fake_similarity() -> None:
    snapshot = _snapshot(_personal("p1", "p2"))
    served = recommend(snapshot, RecRequest("product", 3, item_id="t2"))
    assert served.strategy == "trending"
    assert [(s.item_id, s.reason) for s in served.items] == [
        ("t1", "trending"),
        ("p1", "trending"),
        ("t3", "trending"),
    ]


def test_bad_requests_raise() -> None:
    with pytest.raises(ValueError, match="item_id"):
        recommend(_snapshot(), RecRequest("product", 3))
    with pytest.raises(ValueError, match="scene"):
        recommend(_snapshot(), RecRequest("checkout", 3))


def test_nothing_at_all_is_an_empty_list_not_an_error() -> None:
    served = recommend(Snapshot(None, None, []), RecRequest("home", 5))
    assert served.items == [] and served.strategy == "trending"


PERSONAL = _personal("a1", "a2", "a3", "b1", "b2")
CATEGORIES = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}


def test_no_diversity_without_item_signals_or_lambda() -> None:
    for signals, lam in ((None, 0.9), (ItemSignals(categories=CATEGORIES), 0.0)):
        served = recommend(_snapshot(PERSONAL), RecRequest("home", 3, diversity=lam), signals)
        assert not served.diversified
        assert [s.item_id for s in served.items] == ["a1", "a2", "a3"]


def test_category_cap_when_only_categories_are_known() -> None:
    signals = ItemSignals(categories=CATEGORIES)
    served = recommend(_snapshot(PERSONAL), RecRequest("home", 3, diversity=1.0), signals)
    assert served.diversified
    assert [(s.item_id, s.score) for s in served.items] == [("a1", 2.0), ("b1", 1.7), ("a2", 1.9)]


def test_mmr_when_vectors_are_known() -> None:
    vectors = {item: [1.0, 0.0] if c == "A" else [0.0, 1.0] for item, c in CATEGORIES.items()}
    signals = ItemSignals(vectors=vectors, categories=CATEGORIES)
    served = recommend(_snapshot(PERSONAL), RecRequest("home", 2, diversity=0.8), signals)
    assert served.diversified and [s.item_id for s in served.items] == ["a1", "b1"]


def test_cold_users_get_their_categories_trending_first() -> None:
    features = {"purchased": ["c2"], "categories": {"tea": 1}}
    snapshot = Snapshot(None, features, TRENDING, category_trending=[("c1", 5.0), ("c2", 4.0),
                                                                     ("t1", 3.0)])  # fmt: skip
    served = recommend(snapshot, RecRequest("home", 4))
    assert served.strategy == "trending"
    assert [(s.item_id, s.reason) for s in served.items] == [
        ("c1", "popular_in_category"),  # c2 was purchased: excluded here too
        ("t1", "popular_in_category"),  # in both lists: served once, from its category
        ("t2", "trending"),
        ("p1", "trending"),
    ]


def test_short_personal_and_product_lists_are_padded_from_category_trending() -> None:
    snapshot = Snapshot(_personal("p1"), None, TRENDING, category_trending=[("c1", 5.0)])
    assert _ids(snapshot, RecRequest("home", 3)) == [
        ("p1", "personal"),
        ("c1", "popular_in_category"),
        ("t1", "trending"),
    ]
    product = Snapshot(None, None, TRENDING, category_trending=[("sku", 9.0), ("c1", 5.0)])
    assert _ids(product, RecRequest("product", 2, item_id="sku")) == [
        ("c1", "popular_in_category"),  # the viewed item itself is never served
        ("t1", "trending"),
    ]


def test_preferred_categories_and_blend() -> None:
    features = {"categories": {"tea": 3, "soap": 3, "milk": 1, "bad": "x"}}
    assert preferred_categories(features, 2) == ["soap", "tea"]
    assert preferred_categories({"categories": []}) == []
    lists = [[("a", 1.0), ("b", 0.5)], [], [("a", 2.0), ("c", 1.0)]]
    assert blend(lists, 10) == [("a", 1.0), ("b", 0.5), ("c", 1.0)]
    assert uses_trending(recommend(_snapshot(), RecRequest("home", 1)))
    assert not uses_trending(recommend(_snapshot(_personal("p1")), RecRequest("home", 1)))
