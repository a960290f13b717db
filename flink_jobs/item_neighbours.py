"""Item-to-item lists: per-item neighbour counts in keyed state, coalesced writes to Redis.

Flow. For every learnable event (action weight > 0) the users operator, which holds each
user's :class:`~online_models.neighbours.ItemContext`, emits ONE record on the side output
:data:`ITEM_CONTEXT` (as ``Row(y, record)``, the record one JSON string,
:func:`encode_context`: crossing between Python and Java as one field): the event's time,
weight, its context (the user's last ``neighbour_context`` distinct other items within
``neighbour_gap_s``, each with a pair weight and the item's windowed popularity from the users
operator's trending counts) and its item ``y``. The record is keyed by ``y`` into
:class:`ItemNeighbours`, which adds the context to ``y``'s
:class:`~online_models.neighbours.NeighbourCounts` and rewrites ``y``'s list
``{prefix}:rec:product:{y}``.

Direction (why one record keyed by the new item). A pair (x before y) can only update the
state of the key its record is routed to. Keying by ``y`` gives ``y`` the items the same
users touched shortly *before* it: one record and one state access per event, with the whole
context, learnt at once. Giving ``x`` the items touched *after* it as well would take one
record per context item (``neighbour_context`` records per event), or holding every event
back until its followers are known (lists late by a session). Within browsing sessions
co-interest is mostly two-way (some shoppers view A then B, others B then A), so both items
end up in each other's lists; strongly one-way flows (an accessory bought after the main
product) appear on the later item's list only. That is the accepted cost of one record per
event.

State (keyed by item, Flink ``ValueState[bytes]`` with TTL ``neighbour_state_ttl_s`` refreshed
on every write): the item's ``NeighbourCounts``, at most ``2 * neighbour_max`` neighbours, as a
JSON snapshot followed by a log of at most :data:`~flink_jobs.neighbour_state.MAX_LOGGED`
events since (:mod:`flink_jobs.neighbour_state`: most events append one short line instead of
encoding the whole counts again; reading applies the log, giving the same counts).
Processing-time timers (one per queued item, aligned to the batch's due time) are Flink state
too. In memory only, each bounded: the write queue (items whose list is due, with
their counts), at most the items touched within one ``neighbour_flush_ms`` interval (or
``_MAX_BATCH_ITEMS``); the decoded counts of the ``_DECODED_ITEMS`` most recently updated
items (:class:`~flink_jobs.state_cache.DecodedCache`: reused only while Flink's bytes are
the ones this operator wrote, so state is not parsed again per event); the
:class:`~online_models.neighbours.ListMark` of the last list written for each of at most
``_MARKED_ITEMS`` items, kept for half of ``list_ttl_s``.

Writing only what changed. An event whose item is not queued is tested against the mark of
the item's last written list (:meth:`NeighbourCounts.add`, one division per context item):
when no context item can reach the list and its scores moved by at most 5 %, the list in
Redis is still right, and the item is neither queued, timed, ranked nor written. An item
without a mark (never written by this process, evicted, written so long ago that its Redis
key may expire soon, or after a restore) is always queued. After a restore the counts come
back exactly with the checkpoint; a restored timer whose item is not in the (lost) queue
re-reads the item's state and queues it, so no list write is lost; lists are whole-value
overwrites, so a repeated write is harmless. A list left unchanged keeps the ``event_ts`` of
its last write.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext

from connectors.redis_lists import ItemList, ListWriter, encode_item_list, item_list_suffix
from flink_jobs import profiling
from flink_jobs.batch_queue import BatchQueue
from flink_jobs.collector import tune_collector
from flink_jobs.neighbour_state import LoggedCounts, decode_logged, event_line
from flink_jobs.state_cache import DecodedCache
from flink_jobs.state_descriptors import bytes_state
from flywheel.settings import Settings
from monitoring.metrics import job_metrics, release, serve
from online_models.neighbours import ItemContext, ListMark, NeighbourCounts

__all__ = [
    "CONTEXT_TYPE",
    "ITEM_CONTEXT",
    "ItemNeighbours",
    "ListQueue",
    "context_record",
    "decode_counts",
    "encode_context",
]

# JSON [ts, action weight, [[other item, pair weight, popularity], ...], item]: encode_context
CONTEXT_TYPE = Types.STRING()
# Row(item, record): the side output carries its key, read on the Java side (flink_jobs.job)
ITEM_CONTEXT = OutputTag("item-context", Types.ROW([Types.STRING(), CONTEXT_TYPE]))
_MAX_BATCH_ITEMS = 1024
_DECODED_ITEMS = 2000  # a full item (200 neighbours) decodes to ~40 kB of Python objects
_MARKED_ITEMS = 200_000  # ~150 bytes each
STRATEGY = "cooccurrence"


def context_record(
    context: ItemContext,
    item: str,
    ts: int,
    weight: float,
    popularity: Callable[[str], float | None],
) -> tuple[str, int, float, str] | None:
    """The side-output record of a learnable event (``None`` when the lists are off).

    Pushes ``item`` into the user's ``context`` (the caller stores it with the user's state).

    >>> ctx = ItemContext(size=3, gap_ms=60_000)
    >>> context_record(ctx, "tea", 0, 1.0, lambda item: 7.0)
    ('tea', 0, 1.0, '[]')
    >>> context_record(ctx, "cups", 5_000, 4.0, {"tea": 7.0}.get)
    ('cups', 5000, 4.0, '[["tea",2.0,7.0]]')
    """
    if context.size == 0:
        return None
    pairs = [[x, w, popularity(x) or 0.0] for x, w in context.push(item, ts, weight)]
    return item, ts, float(weight), orjson.dumps(pairs).decode()


def encode_context(record: tuple[str, int, float, str]) -> str:
    """The side-output string of a :func:`context_record`: the JSON array ``[ts, weight,
    context, item]``, whose first three fields are the line the item's state logs
    (:func:`~flink_jobs.neighbour_state.event_line`).

    >>> encode_context(("cups", 5000, 4.0, '[["tea",2.0,7.0]]'))
    '[5000,4.0,[["tea",2.0,7.0]],"cups"]'
    """
    item, ts, weight, context = record
    return f"{event_line(ts, weight, context)[:-1]},{orjson.dumps(item).decode()}]"


def decode_counts(raw: bytes | None, settings: Settings) -> NeighbourCounts:
    """The counts of a state value (snapshot and log); ``None`` (no state) gives empty counts."""
    return decode_logged(raw, settings).counts


class ListQueue(BatchQueue[NeighbourCounts]):
    """Items whose list is due, each with its counts; one batch at a time. Also the
    :class:`ListMark` of the last list written for each of at most ``max_marks`` items,
    forgotten ``mark_ttl_ms`` after the write (the list's Redis key may expire: ``None`` = never).

    A batch opens when the first item is marked into an empty queue and is due
    ``interval_ms`` later (at once when it holds ``max_items``); items marked meanwhile join
    it, so an item's list is written at most once per interval and writes are batched
    (:class:`~flink_jobs.batch_queue.BatchQueue`).

    >>> q = ListQueue(interval_ms=1000, max_items=2)
    >>> q.mark("a", NeighbourCounts(), now_ms=0), q.is_due(999), q.is_due(1000)
    (1000, False, True)
    >>> sorted(q.take()), q.dirty, q.restored(999), q.restored(1000)
    (['a'], {}, True, False)
    """

    def __init__(
        self,
        interval_ms: int,
        max_items: int = _MAX_BATCH_ITEMS,
        max_marks: int = _MARKED_ITEMS,
        mark_ttl_ms: int | None = None,
    ) -> None:
        super().__init__(interval_ms, max_items)
        self.max_marks, self.mark_ttl_ms = max_marks, mark_ttl_ms
        self._marks: dict[str, tuple[ListMark, int]] = {}  # item -> (mark, written at, ms)

    def mark(self, item: str, counts: NeighbourCounts, now_ms: int) -> int:
        """Queue ``item`` with ``counts`` (replacing an older snapshot); when the batch is due."""
        due = self.open_batch(now_ms)
        self.dirty[item] = counts
        return due

    def written(self, item: str, mark: ListMark, now_ms: int) -> None:
        """Remember the mark of the list just written for ``item`` (oldest marks go first)."""
        self._marks.pop(item, None)
        self._marks[item] = (mark, now_ms)
        if len(self._marks) > self.max_marks:
            del self._marks[next(iter(self._marks))]

    def written_mark(self, item: str, now_ms: int) -> ListMark | None:
        """The mark of ``item``'s last written list, if remembered and not too old."""
        entry = self._marks.get(item)
        if entry is None:
            return None
        if self.mark_ttl_ms is not None and now_ms - entry[1] >= self.mark_ttl_ms:
            del self._marks[item]
            return None
        return entry[0]


class ItemNeighbours(KeyedProcessFunction):
    """Keyed by item: learns each item-context record and keeps the item's list fresh."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        s = self.settings
        tune_collector()
        self.state = runtime_context.get_state(bytes_state("neighbours", s.neighbour_state_ttl_s))
        # a list's key expires list_ttl_s after its write: rewrite before that, at half-life
        mark_ttl = s.list_ttl_s * 500 if s.list_ttl_s else None
        self.queue = ListQueue(s.neighbour_flush_ms, mark_ttl_ms=mark_ttl)
        self.decoded: DecodedCache[LoggedCounts] = DecodedCache(decode_logged, _DECODED_ITEMS)
        self.redis = redis.Redis.from_url(s.redis_url)
        self.writer = ListWriter(self.redis, s.redis_prefix, s.list_ttl_s)
        self.metrics = job_metrics()
        serve(s.metrics_port, s.metrics_bind, s.metrics_port_span)
        profiling.start(s.profile_dir, "item_neighbours")  # opt-in (flink_jobs.profiling)

    def close(self) -> None:
        profiling.stop()
        release()
        client = getattr(self, "redis", None)
        if client is not None:
            client.close()

    def process_element(self, record: str, ctx: Any):
        event = orjson.loads(record)  # [ts, weight, context, item]: encode_context
        item = event[3]
        raw = self.state.value()
        held = self.decoded.take(item, raw, self.settings)
        mark = self.queue.written_mark(item, _now_ms())
        raw, stale = held.add(raw, event, record, mark)  # appends the record, or folds
        self.state.update(raw)
        self.decoded.put(item, raw, held)
        self.metrics.neighbour_updates.inc()
        if stale or item in self.queue.dirty:
            self._queue(item, held.counts, ctx)
        elif self.queue.is_due(_now_ms()):
            self._flush()
        yield from ()

    def on_timer(self, timestamp: int, ctx: Any):
        # the key is read (a call into Java) only for a timer older than this queue's batches
        item = ctx.get_current_key() if self.queue.restored(timestamp) else None
        if item is not None and item not in self.queue.dirty:
            raw = self.state.value()  # a timer restored from a checkpoint: queue lost
            if raw:
                self._queue(item, decode_counts(raw, self.settings), ctx)
        if self.queue.is_due(_now_ms()):
            self._flush()
        yield from ()

    def _queue(self, item: str, counts: NeighbourCounts, ctx: Any) -> None:
        queued = item in self.queue.dirty
        due = self.queue.mark(item, counts, _now_ms())
        if not queued:  # one timer per item per batch
            ctx.timer_service().register_processing_time_timer(due)
        if self.queue.is_due(_now_ms()):
            self._flush()

    def _flush(self) -> None:
        batch = self.queue.take()
        now, top_n = _now_ms(), self.settings.top_n
        entries = []
        for item, counts in batch.items():
            ranked, mark = counts.publish(top_n)
            self.queue.written(item, mark, now)
            if ranked:  # an item never seen with another has no list
                rec = ItemList(item, STRATEGY, counts.now, now, ranked)
                entries.append((item_list_suffix(item), encode_item_list(rec)))
        self.writer.write_batch(entries)
        self.metrics.neighbour_lists_written.inc(len(entries))
        if entries:
            self.metrics.neighbour_batch_items.observe(len(entries))


def _now_ms() -> int:
    return math.floor(time.time() * 1000)
