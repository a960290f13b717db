"""How an item's neighbour counts are laid out in Flink state: a snapshot, then a short log.

Re-encoding an item's whole :class:`~online_models.neighbours.NeighbourCounts` (up to
``2 * neighbour_max`` neighbours; ~5 kB of JSON and ~20 us at 110) for every event that
touches it is most of the event's Python work on a popular item. So the state value (one
``ValueState[bytes]`` per item, written once per event as before) is::

    <snapshot: the counts as JSON, or nothing for an item that has none yet>
    \\n[<ts>,<weight>,<context>,<item>]     one JSON line per event since the snapshot
    ...

An event appends its line (the item-context record exactly as it arrived: the event's time,
action weight and context, then the item, which reading ignores) to the bytes it read; every
so often the counts are encoded again as the new snapshot and the log starts empty ("fold").
Reading the state decodes the snapshot and applies the logged events to it in order, through
the same :meth:`NeighbourCounts.add` calls the operator made when they arrived: the same float
operations in the same order, so the counts read back equal, bit for bit, those of an
encode per event (the JSON of a float is its shortest exact repr). One value per item keeps
Flink's guarantees as they were: a checkpoint holds snapshot and log together, a restore
brings both back (nothing lost or doubled), the TTL still runs from the item's last event, and
a value written before this layout (JSON alone) reads as a snapshot with an empty log.

Bounds: a fold happens when the log holds :data:`MAX_LOGGED` events or when one more line
would make it longer than the snapshot, so a value is at most twice its snapshot plus one
line, and decoding it replays at most :data:`MAX_LOGGED` events. An item with a small
snapshot folds often, which costs little (its encoding is small); a full item folds every
:data:`MAX_LOGGED` events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from flywheel.settings import Settings
from online_models.neighbours import ListMark, NeighbourCounts

__all__ = ["MAX_LOGGED", "LoggedCounts", "decode_logged", "encode_snapshot", "event_line"]

MAX_LOGGED = 16
"""Most events kept in an item's log before its counts are encoded again."""


class LoggedCounts:
    """An item's decoded counts and the shape of the bytes that encode them.

    ``logged``: events in the log after the snapshot; ``snapshot_bytes`` / ``log_bytes``: the
    lengths of the two parts of the last value read or written.

    >>> settings = Settings()
    >>> held = decode_logged(None, settings)
    >>> raw, stale = held.add(None, [0, 1.0, []], "[0,1.0,[]]")   # no snapshot yet: a fold
    >>> raw, held.logged
    (b'{"l":0,"t":0,"n":1.0,"w":{},"p":[]}', 0)
    >>> line = event_line(1_000, 2.0, '[["tea",1,7]]')
    >>> raw, _ = held.add(raw, orjson.loads(line), line)   # appended: the log stays shorter
    >>> raw.split(b"\\n")[1], held.logged
    (b'[1000,2.0,[["tea",1,7]]]', 1)
    >>> decode_logged(raw, settings).counts.to_dict() == held.counts.to_dict()
    True
    """

    __slots__ = ("counts", "log_bytes", "logged", "snapshot_bytes")

    def __init__(self, counts: NeighbourCounts, logged: int, snapshot_bytes: int, log_bytes: int):
        self.counts = counts
        self.logged, self.snapshot_bytes, self.log_bytes = logged, snapshot_bytes, log_bytes

    def add(
        self,
        raw: bytes | None,
        event: Sequence[Any],
        line: str,
        mark: ListMark | None = None,
    ) -> tuple[bytes, bool]:
        """Learn one event on top of ``raw``, the bytes these counts were read from (``None``:
        no state). ``event`` is ``[ts, weight, context, ...]`` (context ``[[x, pair weight,
        popularity], ...]``) and ``line`` its JSON text (:func:`event_line`), logged as it is.

        Returns the bytes to write back and whether the list published with ``mark`` may be
        out of date (:meth:`NeighbourCounts.add`).
        """
        stale = self.counts.add(event[0], event[1], event[2], mark)
        line_bytes = ("\n" + line).encode()
        fits = self.log_bytes + len(line_bytes) <= self.snapshot_bytes
        if raw and self.logged < MAX_LOGGED and fits:
            self.logged += 1
            self.log_bytes += len(line_bytes)
            return raw + line_bytes, stale
        snapshot = encode_snapshot(self.counts)  # fold
        self.logged, self.snapshot_bytes, self.log_bytes = 0, len(snapshot), 0
        return snapshot, stale


def encode_snapshot(counts: NeighbourCounts) -> bytes:
    """The snapshot part of a state value: the counts as JSON (a value with an empty log)."""
    return orjson.dumps(counts.to_dict())


def event_line(ts: int, weight: float, context: str) -> str:
    """The JSON line ``[ts, weight, context]`` of an event (``context`` already JSON).

    >>> event_line(5, 0.1, '[["tea",1.0,7.0]]')
    '[5,0.1,[["tea",1.0,7.0]]]'
    """
    return f"[{ts},{weight!r},{context}]"  # a float's repr reads back exactly


def decode_logged(raw: bytes | None, settings: Settings) -> LoggedCounts:
    """The counts a state value encodes: its snapshot with its logged events applied in order
    (``None`` or empty: no state yet, empty counts)."""
    counts = NeighbourCounts(settings.neighbour_max, settings.neighbour_half_life_s)
    if not raw:
        return LoggedCounts(counts, 0, 0, 0)
    snapshot, *lines = bytes(raw).split(b"\n")
    if snapshot:
        counts.load(orjson.loads(snapshot))
    for line in lines:
        event = orjson.loads(line)  # [ts, weight, context, ...]
        counts.add(event[0], event[1], event[2])
    return LoggedCounts(counts, len(lines), len(snapshot), len(raw) - len(snapshot))
