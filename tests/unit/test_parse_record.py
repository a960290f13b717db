"""The parse -> users record: one string carrying every field of a validated event."""

from __future__ import annotations

from typing import Any

import orjson

from flink_jobs.parse import decode_event, encode_event
from flywheel.events import Event, parse_event

NOW = 1_700_000_000_000


def _parsed(**fields: Any) -> Event:
    raw = {"event_id": "e1", "user_id": "alice", "action": "view", "ts": NOW, **fields}
    event = parse_event(orjson.dumps(raw), hmac_key="test-key-123", now_ms=NOW)
    assert isinstance(event, Event)
    return event


def test_every_field_comes_back_in_the_order_the_users_operator_reads() -> None:
    event = _parsed(
        item_id='tea "green"\n', category="drinks/ü", brand="b", price=2.5, scene="home",
        experiment="exp", arm="mf",
    )  # fmt: skip
    fields = decode_event(encode_event(event, NOW + 7))
    assert fields == [
        "e1", event.user, 'tea "green"\n', "view", NOW, "home", "drinks/ü", "b", 2.5, NOW + 7,
        "exp", "mf", [],
    ]  # fmt: skip


def test_a_list_impression_carries_its_items_in_the_order_shown() -> None:
    event = _parsed(action="impression", item_ids=["sku-3", "sku 1", "sku-2"], arm="trending")
    fields = decode_event(encode_event(event, NOW))
    assert (fields[2], tuple(fields[12])) == ("sku-3", ("sku-3", "sku 1", "sku-2"))
    assert fields[8] == event.price and fields[11] == "trending"
