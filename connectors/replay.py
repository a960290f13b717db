"""Replay an event stream into a producer at a target rate.

Pacing is a token bucket: tokens accrue at ``rate`` per second up to a burst of ``rate / 20``
(at least one), and each event spends one. The sender therefore sleeps in short, coarse naps
(sleep granularity does not cap the rate), catches up after a hiccup by at most one burst, and
never exceeds the rate over any window longer than the burst.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from tqdm import tqdm

__all__ = ["EventSink", "ReplayStats", "TokenBucket", "replay"]


class EventSink(Protocol):
    """What :func:`replay` needs of a producer (:class:`~connectors.producer.EventProducer`)."""

    def send(self, event: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class ReplayStats:
    """Outcome of a replay: events sent and seconds taken (including the final flush)."""

    sent: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Achieved events per second.

        >>> ReplayStats(sent=500, elapsed_s=2.0).rate
        250.0
        """
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else float("inf")


class TokenBucket:
    """Rate limiter: :meth:`take` returns how long to sleep before sending one event.

    >>> bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    >>> [bucket.take(0.0) for _ in range(3)]
    [0.0, 0.0, 0.1]
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst = rate, burst
        self._tokens, self._last = burst, now

    def take(self, now: float) -> float:
        """Spend one token; the seconds to wait until it was earned (0 if it already was)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


def replay(
    events: Iterable[dict[str, Any]],
    producer: EventSink,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    *,
    retime: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> ReplayStats:
    """Send ``events`` in order through ``producer``, paced to ``rate`` events per second.

    Parameters
    ----------
    events
        Event dicts, in the order to send them.
    producer
        Anything with ``send(event)`` and ``flush()``; flushed once at the end.
    rate
        Target events per second; ``None`` sends as fast as possible.
    total
        Send at most this many events (also the length of the progress bar).
    progress
        Show a tqdm progress bar on stderr.
    retime
        Replace each event's ``ts`` with the wall clock at send time (the input is not
        modified); by default the data set's timestamps are kept.
    clock, sleep, wall_ms
        Monotonic seconds, sleeping and epoch milliseconds; injectable for tests.
    """
    stream = events if total is None else islice(events, total)
    length = total if total is not None else _length(events)
    start = clock()
    bucket = TokenBucket(rate, max(1.0, rate / 20), start) if rate else None
    sent = 0
    with tqdm(total=length, unit="ev", disable=not progress, file=sys.stderr) as bar:
        for event in stream:
            if bucket is not None:
                wait = bucket.take(clock())
                if wait > 0:
                    sleep(wait)
            producer.send({**event, "ts": wall_ms()} if retime else event)
            sent += 1
            if sent % 1024 == 0:
                bar.update(1024)
        bar.update(sent % 1024)
        producer.flush()
    return ReplayStats(sent=sent, elapsed_s=clock() - start)


def _length(events: Iterable[Any]) -> int | None:
    try:
        return len(events)  # type: ignore[arg-type]
    except TypeError:
        return None
