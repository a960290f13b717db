"""The shopper event schema, its validation, and user-id pseudonymisation.

An event is one JSON object on the ``events`` topic, keyed by user id::

    {"event_id": "e-1", "user_id": "u42", "item_id": "sku-7", "action": "purchase",
     "ts": 1700000000000, "scene": "cart",
     "category": "dairy", "brand": "acme", "price": 2.49}

``event_id``, ``user_id``, ``item_id`` (non-empty strings of at most 128 characters; integers
are accepted and turned into strings), ``action`` (one of :data:`ACTIONS`) and ``ts`` (epoch
milliseconds, integer) are required; ``scene``, ``category``, ``brand`` (strings) and ``price``
(non-negative number) are optional; so are ``experiment`` and ``arm`` (strings the API sets on
the impressions of an experiment's lists, see :mod:`online_models.experiments`). Anything else
in the object (e.g. an impression's ``request_id``, ``strategy``, ``position``, ``propensity``)
is ignored.

**List impressions.** An ``impression`` may carry ``item_ids`` (an array of 1 to
:data:`MAX_SHOWN_ITEMS` item ids, in the order shown: positions are implicit) instead of
``item_id``: one event for a whole served list, which the job counts as one impression per
item. This is what the API logs::

    {"event_id": "9f0c…", "user_id": "u42", "action": "impression", "ts": 1700000000000,
     "item_ids": ["sku-7", "sku-3"], "scene": "home", "request_id": "9f0c…",
     "strategy": "online_mf"}

A single-item impression (``item_id``) stays valid. An event carries ``item_id`` or
``item_ids``, not both; ``item_ids`` on another action, an empty or too long list are
rejected with reason ``bad_item_list``, a list element that is not an id with ``wrong_type``
(the detail names the element, e.g. ``item_ids[2]``).

:func:`parse_event` never raises on bad input: it returns an :class:`Event` or a
:class:`Rejection` whose ``reason`` is one of :data:`REJECT_REASONS` (a bounded set, safe as a
metric label) and whose ``detail`` names the offending field. The user id is replaced by its
keyed HMAC-SHA256 pseudonym before the event leaves this module, so raw ids never reach Flink
state, Redis or logs.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.settings import ACTIONS, Settings

__all__ = [
    "ACTIONS",
    "MAX_SHOWN_ITEMS",
    "REJECT_REASONS",
    "Event",
    "Rejection",
    "check_event",
    "dead_letter",
    "parse_event",
    "pseudonymise",
]

REJECT_REASONS: tuple[str, ...] = (
    "oversized",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_action",
    "bad_timestamp",
    "bad_item_list",
)
MAX_ID_CHARS = 128
MAX_SHOWN_ITEMS = 100
"""Most item ids one list impression (``item_ids``) may carry."""
_REQUIRED = ("event_id", "user_id", "item_id", "action", "ts")
_OPTIONAL_STR = ("scene", "category", "brand", "experiment", "arm")
_ACTION_SET = frozenset(ACTIONS)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event; ``user`` is the pseudonym, never the raw user id."""

    event_id: str
    user: str
    item: str
    action: str
    ts: int
    scene: str = ""
    category: str = ""
    brand: str = ""
    price: float = -1.0
    experiment: str = ""
    arm: str = ""
    items: tuple[str, ...] = ()
    """A list impression's item ids in the order shown (``item`` is the first); empty for an
    event about one item."""

    @property
    def shown(self) -> tuple[str, ...]:
        """The items the event is about: ``items`` of a list impression, else ``(item,)``."""
        return self.items or (self.item,)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was refused: ``reason`` is bounded, ``detail`` is for humans."""

    reason: str
    detail: str


def pseudonymise(user_id: str, key: str) -> str:
    """Keyed HMAC-SHA256 pseudonym of a user id: 32 hex characters (128 bits).

    >>> pseudonymise("alice", "secret-key")
    '5c7dff8695e1bf7eab3bf03a9c7950b1'
    """
    return hmac.digest(key.encode(), user_id.encode(), "sha256").hex()[:32]


def parse_event(
    payload: bytes | str,
    *,
    hmac_key: str,
    now_ms: int,
    max_bytes: int = 16384,
    min_ts_ms: int = 946684800000,
    max_future_skew_ms: int = 86_400_000,
) -> Event | Rejection:
    """Validate one raw payload and pseudonymise its user.

    >>> raw = '{"event_id":"1","user_id":"u","item_id":"i","action":"click","ts":1700000000000}'
    >>> parse_event(raw, hmac_key="k" * 8, now_ms=1700000000000).action
    'click'
    >>> parse_event('{"event_id":"1"}', hmac_key="k" * 8, now_ms=0)
    Rejection(reason='missing_field', detail='missing field user_id')
    """
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > max_bytes:
        return Rejection("oversized", f"payload of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", f"invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    required = _required_fields(obj, min_ts_ms, now_ms + max_future_skew_ms)
    if isinstance(required, Rejection):
        return required
    optional = _optional_fields(obj)
    if isinstance(optional, Rejection):
        return optional
    event_id, user_id, item_id, action, ts, items = required
    return Event(event_id, pseudonymise(user_id, hmac_key), item_id, action, ts, *optional, items)


def check_event(payload: bytes | str, settings: Settings, now_ms: int) -> Event | Rejection:
    """:func:`parse_event` with the limits and key from ``settings``: the one validation
    shared by the job and the API."""
    return parse_event(
        payload,
        hmac_key=settings.hmac_key,
        now_ms=now_ms,
        max_bytes=settings.max_event_bytes,
        min_ts_ms=settings.min_event_ts_ms,
        max_future_skew_ms=settings.max_future_skew_ms,
    )


def _required_fields(
    obj: dict[str, Any], min_ts_ms: int, max_ts_ms: int
) -> tuple[str, str, str, str, int, tuple[str, ...]] | Rejection:
    """``event_id, user_id, item_id, action, ts, items`` (``items`` empty unless the event is
    a list impression, whose ``item_id`` is then its first item)."""
    listed = obj.get("item_ids")
    for name in _REQUIRED:
        if obj.get(name) is None and (name != "item_id" or listed is None):
            return Rejection("missing_field", f"missing field {name}")
    names = ("event_id", "user_id", "item_id") if listed is None else ("event_id", "user_id")
    ids = [_as_id(obj[name]) for name in names]
    for name, value in zip(names, ids, strict=True):
        if value is None:
            return Rejection("wrong_type", f"{name} must be a non-empty string of <= 128 chars")
    action = obj["action"]
    if not isinstance(action, str):
        return Rejection("wrong_type", "action must be a string")
    if action not in _ACTION_SET:
        return Rejection("unknown_action", f"unknown action {action[:40]!r}")
    items: tuple[str, ...] = ()
    if listed is not None:
        checked = _item_list(listed, action, obj.get("item_id"))
        if isinstance(checked, Rejection):
            return checked
        items = checked
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection("wrong_type", "ts must be an integer (epoch milliseconds)")
    if ts < min_ts_ms or ts > max_ts_ms:
        return Rejection("bad_timestamp", f"ts {ts} is outside [{min_ts_ms}, now + skew]")
    event_id, user_id = ids[0], ids[1]
    item_id = items[0] if items else ids[2]
    assert event_id is not None and user_id is not None and item_id is not None
    return event_id, user_id, item_id, action, ts, items


def _item_list(listed: Any, action: str, item_id: Any) -> tuple[str, ...] | Rejection:
    """The ids of a list impression's ``item_ids``, or why they are refused."""
    if action != "impression":
        return Rejection("bad_item_list", f"item_ids is only accepted on impressions, not {action}")
    if item_id is not None:
        return Rejection("bad_item_list", "an event carries item_id or item_ids, not both")
    if not isinstance(listed, list):
        return Rejection("wrong_type", "item_ids must be an array of item ids")
    if not 1 <= len(listed) <= MAX_SHOWN_ITEMS:
        detail = f"item_ids must hold 1..{MAX_SHOWN_ITEMS} item ids, got {len(listed)}"
        return Rejection("bad_item_list", detail)
    items = []
    for index, value in enumerate(listed):
        item = _as_id(value)
        if item is None:
            detail = f"item_ids[{index}] must be a non-empty string of <= 128 chars"
            return Rejection("wrong_type", detail)
        items.append(item)
    return tuple(items)


def _as_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    return None


def _optional_fields(obj: dict[str, Any]) -> tuple[str, str, str, float, str, str] | Rejection:
    """``scene, category, brand, price, experiment, arm`` (``""`` and ``-1.0`` when absent)."""
    texts = []
    for name in _OPTIONAL_STR:
        value = obj.get(name)
        if value is None:
            texts.append("")
        elif isinstance(value, str) and len(value) <= MAX_ID_CHARS:
            texts.append(value)
        else:
            return Rejection("wrong_type", f"{name} must be a string of <= 128 chars")
    scene, category, brand, experiment, arm = texts
    price = obj.get("price")
    if price is None:
        return scene, category, brand, -1.0, experiment, arm
    if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
        return Rejection("wrong_type", "price must be a non-negative number")
    return scene, category, brand, float(price), experiment, arm


def dead_letter(payload: bytes | str, rejection: Rejection, now_ms: int) -> bytes:
    """The dead-letter record: the original payload (as text) with reason and detail.

    >>> dead_letter(b"{", Rejection("malformed_json", "x"), 5)
    b'{"reason":"malformed_json","detail":"x","ts":5,"payload":"{"}'
    """
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    record = {"reason": rejection.reason, "detail": rejection.detail, "ts": now_ms}
    record["payload"] = text
    return orjson.dumps(record)
