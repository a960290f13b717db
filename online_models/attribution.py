"""Attribution of clicks, cart adds and purchases to the impressions that preceded them.

Rule: an action on item ``i`` by user ``u`` is attributed to the *latest* recorded impression
of ``i`` shown to ``u`` in the same experiment, if that impression is at most ``window_ms``
older than the action (an action up to ``skew_ms`` *earlier* than the impression still counts:
the shop's clock and the API's may differ a little). Each impression counts at most one click,
one cart add and one purchase, so a per-arm rate never exceeds 1.

State kept (per user, in the job's keyed state): an :data:`ImpressionLog`, the user's last
``max_entries`` impressions as fixed-size binary records of :data:`RECORD` (22 bytes: 64-bit
item hash, timestamp, 32-bit experiment hash, arm index, flags of what was attributed). The
log is bounded by ``max_entries``; an older impression falls out of it (and can no longer be
credited) when the user has seen ``max_entries`` newer ones. Items are kept as 64-bit hashes:
two items of one user's log colliding is a ~1e-15 event and would credit the wrong item's
impression. Appending is a bytes concatenation (one per served list: a list impression adds
one record per item shown, in the order shown); looking up is a reverse byte search for the
item's hash (a few microseconds for a log of 100).

Actions can reach the job before the impression they belong to (the API logs a list's
impression while the shopper's click may travel through another API worker and arrive first).
An action that finds nothing to credit is therefore *held* in a :data:`HeldActions` buffer
of fixed 17-byte :data:`HELD` records (item hash, timestamp, action flag), and an impression
that arrives later credits the held actions on its items that happened at most ``grace_ms``
after it (:func:`settle`; the rest of the rule as above). Such a race only spans the time an
impression takes to reach the job, so a small ``grace_ms`` suffices, and a click that came
long after its list is credited only when the list's impression arrived first. The buffer is
bounded by ``max_held`` records (oldest dropped first); a held action also goes when the user
holds another one more than ``grace_ms`` later (:func:`hold`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

__all__ = [
    "ATTRIBUTED",
    "HELD",
    "RECORD",
    "HeldActions",
    "ImpressionLog",
    "attribute",
    "hold",
    "key_of",
    "record_impression",
    "record_impressions",
    "settle",
]

RECORD = struct.Struct("<QqIBB")
"""One impression: item hash, event time (ms), experiment hash, arm index, attributed flags."""
ATTRIBUTED: dict[str, int] = {"click": 1, "add_to_cart": 2, "purchase": 4}
"""Actions that are attributed, and the flag each sets on the impression it is credited to."""
ImpressionLog = bytes
HELD = struct.Struct("<QqB")
"""One held action: item hash, event time (ms), its :data:`ATTRIBUTED` flag."""
HeldActions = bytes
_SIZE = RECORD.size
_FLAGS_OFFSET = _SIZE - 1
_ACTION_OF_FLAG = {flag: action for action, flag in ATTRIBUTED.items()}


def key_of(text: str, size: int = 8) -> int:
    """A stable ``size``-byte hash of an item id or experiment name (the same in every process).

    >>> key_of("sku-7") == key_of("sku-7") != key_of("sku-8")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "little")


def record_impression(
    log: ImpressionLog | None, item: int, ts: int, experiment: int, arm: int, max_entries: int
) -> ImpressionLog:
    """``log`` with one more impression, keeping only the newest ``max_entries``.

    >>> log = record_impression(None, key_of("a"), 1000, key_of("e", 4), 1, max_entries=2)
    >>> log = record_impression(log, key_of("b"), 2000, key_of("e", 4), 0, max_entries=2)
    >>> log = record_impression(log, key_of("c"), 3000, key_of("e", 4), 0, max_entries=2)
    >>> len(log) // RECORD.size   # "a" fell out
    2
    """
    return record_impressions(log, (item,), ts, experiment, arm, max_entries)


def record_impressions(
    log: ImpressionLog | None,
    items: Sequence[int],
    ts: int,
    experiment: int,
    arm: int,
    max_entries: int,
) -> ImpressionLog:
    """``log`` with one impression per item of a served list (in the order shown), keeping
    only the newest ``max_entries``: one append for the whole list.

    >>> e = key_of("e", 4)
    >>> log = record_impressions(None, [key_of("a"), key_of("b")], 1000, e, 0, max_entries=10)
    >>> len(log) // RECORD.size, attribute(log, key_of("b"), e, "click", 1500, 60_000)[1]
    (2, 0)
    """
    pack = RECORD.pack
    added = b"".join([pack(item, ts, experiment, arm, 0) for item in items])
    log = (log or b"") + added
    excess = len(log) - max_entries * _SIZE
    return log[excess:] if excess > 0 else log


def attribute(
    log: ImpressionLog | None,
    item: int,
    experiment: int,
    action: str,
    ts: int,
    window_ms: int,
    skew_ms: int = 0,
) -> tuple[ImpressionLog, int] | None:
    """Credit ``action`` on ``item`` at ``ts`` to the latest matching impression.

    Returns the updated log (the impression flagged) and the impression's arm index, or
    ``None`` when nothing is credited: no impression of the item in this experiment, the
    latest one outside the window, or that impression already credited with this action.

    >>> e = key_of("exp", 4)
    >>> log = record_impression(None, key_of("a"), 1000, e, 1, max_entries=10)
    >>> log, arm = attribute(log, key_of("a"), e, "click", 1500, window_ms=60_000)
    >>> arm
    1
    >>> attribute(log, key_of("a"), e, "click", 1600, window_ms=60_000) is None   # counted
    True
    >>> attribute(log, key_of("a"), e, "purchase", 99_000, window_ms=60_000) is None   # late
    True
    """
    if not log:
        return None
    found = _latest(log, item, experiment)
    if found is None:
        return None
    position, (_, shown_ts, _, arm, flags) = found
    age = ts - shown_ts
    flag = ATTRIBUTED[action]
    if age > window_ms or age < -skew_ms or flags & flag:
        return None
    updated = bytearray(log)
    updated[position + _FLAGS_OFFSET] |= flag
    return bytes(updated), arm


def _latest(log: bytes, item: int, experiment: int) -> tuple[int, tuple[int, ...]] | None:
    """Offset and fields of the last record of ``item`` in ``experiment``, if any."""
    needle, end = item.to_bytes(8, "little"), len(log)
    while (position := log.rfind(needle, 0, end)) >= 0:
        if position % _SIZE == 0:
            fields = RECORD.unpack_from(log, position)
            if fields[2] == experiment:
                return position, fields
        end = position + len(needle) - 1  # earlier matches only (they may overlap this one)
    return None


def hold(
    held: HeldActions | None, item: int, action: str, ts: int, grace_ms: int, max_held: int
) -> HeldActions:
    """``held`` with one more action awaiting its impression; held actions more than
    ``grace_ms`` older than ``ts`` are dropped, and the oldest beyond ``max_held``.

    >>> held = hold(None, key_of("a"), "click", 1000, grace_ms=5000, max_held=8)
    >>> held = hold(held, key_of("b"), "purchase", 9000, grace_ms=5000, max_held=8)
    >>> len(held) // HELD.size   # the click at 1000 waited longer than 5 s of event time
    1
    """
    kept = _unexpired(held or b"", ts - grace_ms) + HELD.pack(item, ts, ATTRIBUTED[action])
    excess = len(kept) - max_held * HELD.size
    return kept[excess:] if excess > 0 else kept


def settle(
    log: ImpressionLog,
    held: HeldActions,
    shown: Sequence[int],
    experiment: int,
    ts: int,
    window_ms: int,
    skew_ms: int,
    grace_ms: int,
) -> tuple[ImpressionLog, HeldActions, list[tuple[str, int]]]:
    """Credit the held actions on the items of an impression that has just been recorded in
    ``log`` (``shown``: its item hashes, ``ts``: its time): those at most ``grace_ms`` later
    than the impression, by the rule of :func:`attribute`.

    Returns the updated log, the actions still held (all but the credited ones) and
    ``(action, arm index)`` per credited action.

    >>> e = key_of("exp", 4)
    >>> held = hold(None, key_of("a"), "click", 1500, grace_ms=5000, max_held=8)
    >>> log = record_impressions(None, [key_of("a"), key_of("b")], 1000, e, 1, max_entries=10)
    >>> log, held, credited = settle(log, held, [key_of("a"), key_of("b")], e, 1000,
    ...                              window_ms=60_000, skew_ms=0, grace_ms=5000)
    >>> credited, held
    ([('click', 1)], b'')
    >>> held = hold(None, key_of("b"), "click", 7000, grace_ms=5000, max_held=8)
    >>> settle(log, held, [key_of("b")], e, 1000, 60_000, 0, 5000)[2]   # 6 s after the list
    []
    """
    wanted = set(shown)
    credited: list[tuple[str, int]] = []
    still = bytearray()
    for offset in range(0, len(held), HELD.size):
        item, action_ts, flag = HELD.unpack_from(held, offset)
        if item in wanted and action_ts - ts <= grace_ms:
            action = _ACTION_OF_FLAG[flag]
            found = attribute(log, item, experiment, action, action_ts, window_ms, skew_ms)
            if found is not None:
                log, arm = found
                credited.append((action, arm))
                continue
        still += held[offset : offset + HELD.size]
    return log, bytes(still), credited


def _unexpired(held: bytes, oldest_ts: int) -> bytes:
    """The records of ``held`` whose time is at least ``oldest_ts`` (order kept)."""
    if not held:
        return held
    keep = [
        held[o : o + HELD.size]
        for o in range(0, len(held), HELD.size)
        if HELD.unpack_from(held, o)[1] >= oldest_ts
    ]
    return b"".join(keep)
