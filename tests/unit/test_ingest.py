"""Validation of POST /v1/events bodies and the records the API produces."""

from __future__ import annotations

import time

import orjson
import pytest

from flywheel.events import REJECT_REASONS, Event, check_event, pseudonymise
from flywheel.settings import load_settings
from serving.ingest import MAX_BATCH, BadBatch, forget_record, impression_record, parse_batch

SETTINGS = load_settings(hmac_key="test-key-123")
NOW = int(time.time() * 1000)


def _event(**changes: object) -> dict[str, object]:
    base = {"event_id": "e1", "user_id": "alice", "item_id": "sku-1", "action": "click"}
    return {**base, "ts": NOW, **changes}


def test_one_object_or_an_array_gives_keyed_raw_records() -> None:
    single = parse_batch(orjson.dumps(_event()), SETTINGS, NOW)
    many = parse_batch(orjson.dumps([_event(), _event(user_id=7)]), SETTINGS, NOW)
    assert isinstance(single, list) and isinstance(many, list)
    key, payload = single[0]
    assert key == pseudonymise("alice", SETTINGS.hmac_key).encode()
    assert orjson.loads(payload)["user_id"] == "alice"  # the job pseudonymises
    assert [k for k, _ in many][1] == pseudonymise("7", SETTINGS.hmac_key).encode()


BAD_EVENTS = {
    "oversized": _event(pad="x" * SETTINGS.max_event_bytes),
    "not_an_object": [1, 2],
    "missing_field": {k: v for k, v in _event().items() if k != "item_id"},
    "wrong_type": _event(ts="yesterday"),
    "unknown_action": _event(action="teleport"),
    "bad_timestamp": _event(ts=42),
    "bad_item_list": _event(action="impression", item_id=None, item_ids=[]),
}


@pytest.mark.parametrize("reason", sorted(BAD_EVENTS))
def test_a_bad_event_refuses_the_batch_naming_its_index(reason: str) -> None:
    body = orjson.dumps([_event(), BAD_EVENTS[reason]])
    bad = parse_batch(body, SETTINGS, NOW)
    assert isinstance(bad, BadBatch)
    assert (bad.index, bad.reason) == (1, reason)
    assert bad.message.startswith(f"event 1: {reason}: ")


def test_every_reject_reason_is_covered() -> None:
    assert set(BAD_EVENTS) | {"malformed_json"} == set(REJECT_REASONS)


def test_the_field_is_named() -> None:
    bad = parse_batch(orjson.dumps(BAD_EVENTS["missing_field"]), SETTINGS, NOW)
    assert (
        isinstance(bad, BadBatch) and bad.message == "event 0: missing_field: missing field item_id"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event_id": ', "malformed_json"),
        (b'"text"', "not_an_object"),
        (b"[]", "batch_size"),
        (orjson.dumps([_event()] * (MAX_BATCH + 1)), "batch_size"),
    ],
)
def test_bad_bodies_have_no_index(body: bytes, reason: str) -> None:
    bad = parse_batch(body, SETTINGS, NOW)
    assert isinstance(bad, BadBatch) and (bad.index, bad.reason) == (None, reason)


def test_forget_is_refused_from_clients() -> None:
    bad = parse_batch(orjson.dumps(_event(action="forget")), SETTINGS, NOW)
    assert isinstance(bad, BadBatch) and "DELETE /v1/users" in bad.detail


def test_a_served_list_is_one_impression_event_that_passes_the_jobs_validation() -> None:
    user = pseudonymise("bob", "k" * 8)
    key, payload = impression_record(user, "bob", "cart", "online_mf", "r9", ["a", "b"], NOW)
    assert key == user.encode()
    event = orjson.loads(payload)
    assert event == {
        "event_id": "r9",
        "user_id": "bob",
        "item_ids": ["a", "b"],
        "action": "impression",
        "ts": NOW,
        "scene": "cart",
        "request_id": "r9",
        "strategy": "online_mf",
    }
    parsed = parse_batch(payload, SETTINGS, NOW)
    assert isinstance(parsed, list) and [p for _, p in parsed] == [payload]


def test_clients_may_post_list_impressions_too() -> None:
    shown = _event(action="impression", item_id=None, item_ids=["a", 7], event_id="r1")
    parsed = parse_batch(orjson.dumps([_event(), shown]), SETTINGS, NOW)
    assert isinstance(parsed, list) and len(parsed) == 2
    assert orjson.loads(parsed[1][1])["item_ids"] == ["a", 7]  # produced as posted


@pytest.mark.parametrize(
    ("item_ids", "reason", "field"),
    [
        ([], "bad_item_list", "item_ids must hold 1..100"),
        ([f"i{k}" for k in range(101)], "bad_item_list", "item_ids must hold 1..100"),
        ("a", "wrong_type", "item_ids must be an array"),
        (["a", 3.5], "wrong_type", "item_ids[1] "),
    ],
)
def test_a_bad_list_refuses_the_batch_naming_the_field(
    item_ids: object, reason: str, field: str
) -> None:
    shown = _event(action="impression", item_id=None, item_ids=item_ids)
    bad = parse_batch(orjson.dumps([_event(), shown]), SETTINGS, NOW)
    assert isinstance(bad, BadBatch) and (bad.index, bad.reason) == (1, reason)
    assert bad.message.startswith(f"event 1: {reason}: {field}")


def test_the_tombstone_passes_the_jobs_validation() -> None:
    key, payload = forget_record("bob", "f-1", "k" * 8, NOW)
    assert orjson.loads(payload) == {
        "event_id": "f-1",
        "user_id": "bob",
        "item_id": "-",
        "action": "forget",
        "ts": NOW,
    }
    assert key == pseudonymise("bob", "k" * 8).encode()
    assert isinstance(check_event(payload, SETTINGS, NOW), Event)
