"""The fast path's query parser: plainly valid queries are served directly, everything else is
left to the FastAPI route (which validates and names the field)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from serving.recommendations import MAX_K, RecQuery, fast_query


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"user_id": "ann"}, RecQuery("ann")),
        ({"user_id": "ann", "k": 5, "scene": "cart"}, RecQuery("ann", "cart", k=5)),
        (
            {"user_id": "ann", "scene": "product", "item_id": "sku 7", "k": MAX_K},
            RecQuery("ann", "product", "sku 7", MAX_K),
        ),
        ({"user_id": "ann", "diversity": "0.25"}, RecQuery("ann", diversity=0.25)),
        ({"user_id": "ann", "diversity": "1"}, RecQuery("ann", diversity=1.0)),
        ({"user_id": "zoë & co", "extra": "ignored"}, RecQuery("zoë & co")),
        ({"user_id": "u" * 128}, RecQuery("u" * 128)),
    ],
)
def test_a_plainly_valid_query_is_parsed(params: dict[str, object], expected: RecQuery) -> None:
    assert fast_query(urlencode(params).encode()) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"user_id=",
        b"user_id=" + b"u" * 129,
        b"user_id=a&user_id=b",  # repeated parameter
        b"user_id=a&k=0",
        b"user_id=a&k=101",
        b"user_id=a&k=010",  # not a plain decimal
        b"user_id=a&k=ten",
        b"user_id=a&k=",
        b"user_id=a&k=%EF%BC%95",  # a full-width digit
        b"user_id=a&scene=checkout",
        b"user_id=a&scene=product",  # no item_id
        b"user_id=a&scene=product&item_id=",
        b"user_id=a&diversity=1.5",
        b"user_id=a&diversity=1e-1",
        b"user_id=a&diversity=nan",
        b"user_id=a&diversity=-0",
    ],
)
def test_anything_unusual_is_left_to_the_route(raw: bytes) -> None:
    assert fast_query(raw) is None
