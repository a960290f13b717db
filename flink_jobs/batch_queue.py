"""Coalescing batches of keys, the mechanism under the job's refresh and list-write queues.

A batch opens when the first key is marked into an empty queue and is due ``interval_ms``
later (at once when it holds ``max_keys``); every key marked meanwhile joins it, replacing
its earlier value, so a key is handled at most once per interval and work is batched. The
operators set one Flink processing-time timer per marked key at the batch's due time; the
queue itself is not checkpointed, so :meth:`BatchQueue.restored` tells a timer restored from
a checkpoint (its batch lost with the old process) from a late timer of a batch already
handled.

State kept: the open batch (at most ``max_keys`` keys with their values: the caller checks
:meth:`BatchQueue.is_due` after each mark) and two timestamps.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BatchQueue"]

V = TypeVar("V")


class BatchQueue(Generic[V]):
    """Keys waiting in the open batch, each with its latest value.

    >>> q: BatchQueue[int] = BatchQueue(interval_ms=1000, max_keys=2)
    >>> q.open_batch(now_ms=0)
    1000
    >>> q.dirty["a"] = 1  # what a subclass's mark does after opening the batch
    >>> q.open_batch(now_ms=500), q.is_due(999), q.is_due(1000)
    (1000, False, True)
    >>> q.take(), q.dirty, q.restored(999), q.restored(1000)
    ({'a': 1}, {}, True, False)
    """

    def __init__(self, interval_ms: int, max_keys: int) -> None:
        self.interval_ms = interval_ms
        self.max_keys = max_keys
        self.dirty: dict[str, V] = {}
        self.due_at: int | None = None
        self.first_due: int | None = None  # due time of the first batch this queue opened

    def open_batch(self, now_ms: int) -> int:
        """The due time of the open batch, opening one at ``now_ms`` if none is open."""
        if not self.dirty or self.due_at is None:
            self.due_at = now_ms + self.interval_ms
            if self.first_due is None:
                self.first_due = self.due_at
        return self.due_at

    def is_due(self, now_ms: int) -> bool:
        """Whether the open batch should be handled now."""
        if not self.dirty or self.due_at is None:
            return False
        return now_ms >= self.due_at or len(self.dirty) >= self.max_keys

    def restored(self, timer_ms: int) -> bool:
        """Whether a timer due at ``timer_ms`` was set before this queue opened its first batch,
        i.e. it comes from a checkpoint and its batch was lost. Every later timer belongs to a
        batch of this queue: handled already unless its key is still queued (however late the
        timer fires, e.g. after several batches were handled by size)."""
        return self.first_due is None or timer_ms < self.first_due

    def take(self) -> dict[str, V]:
        """Remove and return every queued key with its value."""
        batch, self.dirty = self.dirty, {}
        self.due_at = None
        return batch
