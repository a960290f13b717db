"""The product and cart scenes built on the job's item neighbour lists."""

from __future__ import annotations

from typing import Any

from connectors.redis_lists import RecList
from serving.recommend import RecRequest, Snapshot, recommend

TRENDING = [("t1", 90.0), ("t2", 80.0), ("s2", 70.0), ("t3", 60.0)]
PERSONAL = RecList("pseudo", "home", "online_mf", 1, 2, [("p1", 2.0), ("n2", 1.9), ("p2", 1.8)])


def _snapshot(
    neighbours: dict[str, list[tuple[str, float]]],
    features: dict[str, Any] | None = None,
    personal: RecList | None = PERSONAL,
) -> Snapshot:
    return Snapshot(personal, features, TRENDING, neighbours)


def _served(snapshot: Snapshot, request: RecRequest) -> tuple[str, list[tuple[str, str]]]:
    served = recommend(snapshot, request)
    return served.strategy, [(s.item_id, s.reason) for s in served.items]


def test_product_serves_the_items_neighbours_then_trending() -> None:
    snapshot = _snapshot(
        {"sku": [("s1", 0.9), ("sku", 0.8), ("s2", 0.5), ("bought", 0.4)]},
        {"purchased": ["bought"]},
    )
    strategy, items = _served(snapshot, RecRequest("product", 4, item_id="sku"))
    assert strategy == "cooccurrence"
    assert items == [("s1", "similar"), ("s2", "similar"), ("t1", "trending"), ("t2", "trending")]
    scores = [s.score for s in recommend(snapshot, RecRequest("product", 2, item_id="sku")).items]
    assert scores == [0.9, 0.5]


def test_product_without_a_neighbour_list_is_trending_minus_the_item() -> None:
    snapshot = _snapshot({"other": [("s1", 1.0)]})
    strategy, items = _served(snapshot, RecRequest("product", 2, item_id="t1"))
    assert strategy == "trending" and items == [("t2", "trending"), ("s2", "trending")]


def test_cart_merges_the_cart_items_lists_and_blends_the_personal_list() -> None:
    neighbours = {
        "c1": [("n1", 0.5), ("n2", 0.4), ("c2", 0.9), ("seen", 0.8)],
        "c2": [("n2", 0.3), ("n3", 0.6), ("c1", 0.9)],
    }
    features = {"cart": ["c1", "c2"], "recent": ["seen"], "purchased": ["p2"]}
    request = RecRequest("cart", 6, exclude_purchased=False)  # cart drops purchases anyway
    strategy, items = _served(_snapshot(neighbours, features), request)
    assert strategy == "cooccurrence"
    # n2 is on both lists (0.4 + 0.3), so it leads; cart items, recent and bought items are out
    assert items == [
        ("n2", "with_cart"),
        ("p1", "personal"),
        ("n3", "with_cart"),
        ("n1", "with_cart"),
        ("t1", "trending"),
        ("t2", "trending"),
    ]


def test_cart_without_neighbour_items_keeps_the_personal_list() -> None:
    neighbours = {"c1": [("c1", 1.0), ("seen", 0.5)]}
    features = {"cart": ["c1"], "recent": ["seen"], "purchased": []}
    strategy, items = _served(_snapshot(neighbours, features), RecRequest("cart", 2))
    assert strategy == "online_mf" and items == [("p1", "personal"), ("n2", "personal")]
    no_cart = _snapshot(neighbours, {"recent": [], "purchased": []}, personal=None)
    assert _served(no_cart, RecRequest("cart", 1)) == ("trending", [("t1", "trending")])


def test_a_cold_users_cart_gets_neighbours_then_trending() -> None:
    snapshot = _snapshot({"c1": [("n1", 0.5)]}, {"cart": ["c1"]}, personal=None)
    strategy, items = _served(snapshot, RecRequest("cart", 3))
    assert strategy == "cooccurrence"
    assert items == [("n1", "with_cart"), ("t1", "trending"), ("t2", "trending")]


def test_an_experiments_trending_arm_overrides_the_neighbour_lists() -> None:
    snapshot = _snapshot({"sku": [("s1", 0.9)], "c1": [("n1", 0.5)]}, {"cart": ["c1"]})
    product = RecRequest("product", 1, item_id="sku", strategy="trending")
    assert _served(snapshot, product) == ("trending", [("t1", "trending")])
    cart = RecRequest("cart", 1, strategy="trending")
    assert _served(snapshot, cart) == ("trending", [("t1", "trending")])
