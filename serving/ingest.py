"""Records the API writes to the events topic: client events, impressions, forget tombstones.

Pure functions (no I/O). Each record is ``(key, payload)``: the key is the user's HMAC
pseudonym (as :class:`connectors.producer.EventProducer` keys them, so a user's events stay
in order on one partition) and the payload is the event JSON with the *raw* ``user_id``; the job
validates and pseudonymises it like any other event.

- :func:`parse_batch` validates a ``POST /v1/events`` body (one event object or an array of at
  most :data:`MAX_BATCH`) with :func:`flywheel.events.check_event`, the job's own rules, and
  refuses the whole batch at the first bad event, naming its index, reason and field.
  ``forget`` is refused there: erasure goes through ``DELETE /v1/users/{user_id}``.
- :func:`impression_record`: one ``impression`` event per served list, its items in
  ``item_ids`` in the order shown (positions are implicit), with the extra fields
  ``request_id`` and ``strategy``, which the job ignores, and, when an experiment assigned the
  request, ``experiment``, ``arm`` (which the job counts per arm) and ``propensity`` (the
  probability the arm had of being chosen, for off-policy evaluation). Its ``event_id`` is the
  ``request_id``.
- :func:`forget_record`: the tombstone ``{"action": "forget", "item_id": "-"}``; the job
  clears the user's Flink state, queued refresh and Redis keys when it reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.events import Rejection, check_event, pseudonymise
from flywheel.settings import Settings
from online_models.experiments import Assignment

__all__ = [
    "MAX_BATCH",
    "BadBatch",
    "Record",
    "forget_record",
    "impression_record",
    "parse_batch",
]

MAX_BATCH = 1000
"""Most events one ``POST /v1/events`` may carry."""

Record = tuple[bytes, bytes]
"""``(Kafka key, JSON payload)``."""


@dataclass(frozen=True)
class BadBatch:
    """Why a batch was refused; ``index`` is the first bad event's, ``None`` for the body."""

    index: int | None
    reason: str
    detail: str

    @property
    def message(self) -> str:
        """Human-readable: ``event 3: missing_field: missing field ts``."""
        where = "body" if self.index is None else f"event {self.index}"
        return f"{where}: {self.reason}: {self.detail}"


def parse_batch(body: bytes, settings: Settings, now_ms: int) -> list[Record] | BadBatch:
    """Validate a body of one event or an array of events; records for all, or why not.

    >>> from flywheel.settings import load_settings
    >>> parse_batch(b'[{"event_id": "1"}]', load_settings(), 0).message
    'event 0: missing_field: missing field user_id'
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BadBatch(None, "malformed_json", f"invalid JSON: {exc}")
    events = [parsed] if isinstance(parsed, dict) else parsed
    if not isinstance(events, list):
        return BadBatch(None, "not_an_object", "expected an event object or an array of them")
    if not 1 <= len(events) <= MAX_BATCH:
        return BadBatch(None, "batch_size", f"expected 1..{MAX_BATCH} events, got {len(events)}")
    records: list[Record] = []
    for index, event in enumerate(events):
        payload = orjson.dumps(event)
        checked = check_event(payload, settings, now_ms)
        if isinstance(checked, Rejection):
            return BadBatch(index, checked.reason, checked.detail)
        if checked.action == "forget":
            detail = "action 'forget' is only accepted through DELETE /v1/users/{user_id}"
            return BadBatch(index, "unknown_action", detail)
        records.append((checked.user.encode(), payload))
    return records


def impression_record(
    user: str,
    user_id: str,
    scene: str,
    strategy: str,
    request_id: str,
    item_ids: list[str],
    now_ms: int,
    assignment: Assignment | None = None,
) -> Record:
    """The ``impression`` event of one served list (``item_ids`` in served order), keyed by
    ``user``, the pseudonym of ``user_id``.

    >>> impression_record("ab12", "u", "home", "trending", "r1", ["i", "j"], 5)[1]
    b'{"event_id":"r1","user_id":"u","item_ids":["i","j"],"action":"impression","ts":5,"scene":"home","request_id":"r1","strategy":"trending"}'
    """
    event: dict[str, Any] = {
        "event_id": request_id,
        "user_id": user_id,
        "item_ids": item_ids,
        "action": "impression",
        "ts": now_ms,
        "scene": scene,
        "request_id": request_id,
        "strategy": strategy,
    }
    if assignment is not None:
        event["experiment"] = assignment.experiment
        event["arm"] = assignment.arm
        event["propensity"] = round(assignment.propensity, 6)
    return user.encode(), orjson.dumps(event)


def forget_record(user_id: str, event_id: str, hmac_key: str, now_ms: int) -> Record:
    """The tombstone that makes the job erase the user (state, queued refresh, Redis keys).

    >>> forget_record("u", "f1", "k" * 8, 5)[1]
    b'{"event_id":"f1","user_id":"u","item_id":"-","action":"forget","ts":5}'
    """
    event = {"event_id": event_id, "user_id": user_id, "item_id": "-", "action": "forget"}
    return pseudonymise(user_id, hmac_key).encode(), orjson.dumps({**event, "ts": now_ms})
