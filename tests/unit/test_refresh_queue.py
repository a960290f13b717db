"""The users operator's refresh queue: coalescing, and which timers come from a checkpoint."""

from __future__ import annotations

import time

from flink_jobs.refresh import RefreshQueue
from flink_jobs.user_state import decode_state
from flywheel.settings import Settings


def test_users_marked_within_an_interval_share_one_batch() -> None:
    settings = Settings()
    queue = RefreshQueue(coalesce_ms=60_000, max_users=3)
    state = decode_state(None, settings)
    due = queue.mark("u1", state, settings, ingest_ms=1, ts=10)
    assert queue.mark("u2", state, settings, ingest_ms=2, ts=11) == due
    assert queue.mark("u1", state, settings, ingest_ms=3, ts=12) == due
    assert not queue.is_due(due - 1) and queue.is_due(due)
    batch = queue.take()
    assert list(batch) == ["u1", "u2"] and batch["u1"].ingest_ms == [1, 3]
    assert queue.due_at is None and not queue.dirty


def test_late_timers_of_refreshed_batches_are_not_taken_for_restored_ones() -> None:
    settings = Settings()
    queue = RefreshQueue(coalesce_ms=250, max_users=1)
    state = decode_state(None, settings)
    assert queue.restored(int(time.time() * 1000) + 10_000), "no batch yet: from a checkpoint"
    first = queue.mark("u1", state, settings, ingest_ms=0, ts=0)
    queue.take()  # full: refreshed at once, its timer fires later
    second = queue.mark("u2", state, settings, ingest_ms=0, ts=0)
    queue.take()
    assert second >= first
    assert not queue.restored(first) and not queue.restored(second)
    assert queue.restored(first - 1), "due before the first batch: set by an earlier run"
