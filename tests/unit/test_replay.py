"""Replay: order, counts, limits, retiming and token-bucket pacing (with a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.replay import ReplayStats, TokenBucket, replay


class RecordingProducer:
    """Implements the producer interface replay needs and records what it was given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.flushes = 0

    def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)

    def flush(self) -> None:
        self.flushes += 1


class FakeClock:
    """Monotonic time that only moves when the replay sleeps (or a send costs time)."""

    def __init__(self, send_cost_s: float = 0.0) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.send_cost_s = send_cost_s

    def __call__(self) -> float:
        self.now += self.send_cost_s
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_events(n: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"e{i}", "user_id": f"u{i % 7}", "item_id": "i", "action": "view", "ts": i}
        for i in range(n)
    ]


def test_unpaced_replay_sends_everything_in_order_and_flushes_once() -> None:
    producer = RecordingProducer()
    events = make_events(3000)

    stats = replay(iter(events), producer, rate=None, progress=False)

    assert stats.sent == 3000
    assert producer.sent == events
    assert producer.flushes == 1


def test_total_limits_the_events_sent() -> None:
    producer = RecordingProducer()

    stats = replay(make_events(50), producer, total=20, progress=False)

    assert stats.sent == 20
    assert [e["event_id"] for e in producer.sent] == [f"e{i}" for i in range(20)]


def test_retime_rewrites_ts_without_touching_the_input() -> None:
    producer = RecordingProducer()
    events = make_events(5)
    clock = iter(range(1_800_000_000_000, 1_800_000_000_005))

    replay(events, producer, progress=False, retime=True, wall_ms=lambda: next(clock))

    assert [e["ts"] for e in producer.sent] == list(range(1_800_000_000_000, 1_800_000_000_005))
    assert [e["ts"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["event_id"] for e in producer.sent] == [e["event_id"] for e in events]


def test_paced_replay_sleeps_for_the_schedule() -> None:
    producer = RecordingProducer()
    clock = FakeClock()

    stats = replay(
        make_events(1000), producer, rate=100.0, progress=False, clock=clock, sleep=clock.sleep
    )

    assert stats.sent == 1000 and producer.sent == make_events(1000)
    burst = 5  # rate / 20: sent at once, then one event per 1/rate seconds
    assert sum(clock.sleeps) == pytest.approx((1000 - burst) / 100.0)
    assert stats.rate == pytest.approx(1000 / 9.95)


def test_pacing_does_not_sleep_when_sending_is_slower_than_the_rate() -> None:
    producer = RecordingProducer()
    clock = FakeClock(send_cost_s=0.2)  # each event costs 200 ms: slower than 10/s

    stats = replay(
        make_events(100), producer, rate=10.0, progress=False, clock=clock, sleep=clock.sleep
    )

    assert stats.sent == 100
    assert clock.sleeps == []


def test_real_clock_pacing_keeps_counts_and_order() -> None:
    producer = RecordingProducer()

    stats = replay(make_events(200), producer, rate=5000.0, progress=False)

    assert stats.sent == 200 and producer.sent == make_events(200)
    assert stats.elapsed_s > 0


def test_token_bucket_allows_one_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)

    waits = [bucket.take(0.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    assert bucket.take(10.0) == 0.0  # a long pause refills at most one burst
    assert [bucket.take(10.0) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])

    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1.0, now=0.0)


def test_stats_rate() -> None:
    assert ReplayStats(sent=10, elapsed_s=0.5).rate == 20.0
