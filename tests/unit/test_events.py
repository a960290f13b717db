"""The event schema's list impressions: one event for a served list (``item_ids``), validated
like the rest, next to the single-item form that stays valid."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from flywheel.events import MAX_SHOWN_ITEMS, Event, Rejection, parse_event

NOW = 1_700_000_000_000
KEY = "test-key-123"


def _parse(**fields: Any) -> Event | Rejection:
    event = {"event_id": "r1", "user_id": "alice", "action": "impression", "ts": NOW, **fields}
    return parse_event(orjson.dumps(event), hmac_key=KEY, now_ms=NOW)


def test_a_list_impression_keeps_its_items_in_the_order_shown() -> None:
    event = _parse(item_ids=["sku-3", 7, "sku-1"], arm="trending", request_id="r1")
    assert isinstance(event, Event)
    assert event.items == ("sku-3", "7", "sku-1")
    assert event.shown == event.items
    assert event.item == "sku-3"  # the first item shown
    assert (event.action, event.arm) == ("impression", "trending")


def test_a_single_item_impression_is_still_valid() -> None:
    event = _parse(item_id="sku-3", position=2)
    assert isinstance(event, Event)
    assert (event.item, event.items, event.shown) == ("sku-3", (), ("sku-3",))


def test_the_longest_list_is_accepted() -> None:
    event = _parse(item_ids=[f"i{k}" for k in range(MAX_SHOWN_ITEMS)])
    assert isinstance(event, Event) and len(event.shown) == MAX_SHOWN_ITEMS


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [
        ({"item_ids": []}, "bad_item_list", "item_ids must hold 1..100 item ids, got 0"),
        (
            {"item_ids": [f"i{k}" for k in range(MAX_SHOWN_ITEMS + 1)]},
            "bad_item_list",
            "item_ids must hold 1..100 item ids, got 101",
        ),
        (
            {"item_ids": ["a"], "item_id": "a"},
            "bad_item_list",
            "an event carries item_id or item_ids, not both",
        ),
        (
            {"item_ids": ["a"], "action": "click"},
            "bad_item_list",
            "item_ids is only accepted on impressions, not click",
        ),
        ({"item_ids": "a,b"}, "wrong_type", "item_ids must be an array of item ids"),
        ({"item_ids": {"a": 1}}, "wrong_type", "item_ids must be an array of item ids"),
        (
            {"item_ids": ["a", ""]},
            "wrong_type",
            "item_ids[1] must be a non-empty string of <= 128 chars",
        ),
        (
            {"item_ids": ["a", "b", None]},
            "wrong_type",
            "item_ids[2] must be a non-empty string of <= 128 chars",
        ),
        (
            {"item_ids": [True]},
            "wrong_type",
            "item_ids[0] must be a non-empty string of <= 128 chars",
        ),
        (
            {"item_ids": ["x" * 129]},
            "wrong_type",
            "item_ids[0] must be a non-empty string of <= 128 chars",
        ),
        ({}, "missing_field", "missing field item_id"),
    ],
)
def test_a_bad_list_is_rejected_naming_the_field(
    fields: dict[str, Any], reason: str, detail: str
) -> None:
    assert _parse(**fields) == Rejection(reason, detail)


def test_the_other_fields_of_a_list_impression_are_checked_as_usual() -> None:
    assert _parse(item_ids=["a"], ts="now") == Rejection(
        "wrong_type", "ts must be an integer (epoch milliseconds)"
    )
    assert _parse(item_ids=["a"], arm=3) == Rejection(
        "wrong_type", "arm must be a string of <= 128 chars"
    )
