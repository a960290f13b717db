"""Producing the API's records to Kafka without blocking the event loop.

kafka-python's producer is synchronous: ``send()`` may block on metadata and the producer's
constructor blocks on bootstrapping. Every producer call therefore runs in one dedicated worker
thread (so the records of one call keep their order); acknowledgements come back to the event
loop through the send futures' callbacks.

Fire-and-forget records (the impressions of served lists) are collected on the event loop and
handed to the worker thread together every :data:`COALESCE_S` (one thread hand-over for all
the lists served meanwhile, not one per request); :meth:`KafkaSink.deliver` hands over what is
collected before its own records, so a process's records reach Kafka in the order they were
given.

The producer is created on first use, so the API starts and serves lists while Kafka is
down; after a failed creation it is retried at most every :data:`RETRY_S`. Memory is bounded
by the producer's own buffer plus at most ``max_backlog`` queued hand-overs (and the records
of one coalescing interval).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import KafkaProducer

from flywheel.settings import Settings

__all__ = ["COALESCE_S", "RETRY_S", "KafkaSink", "SinkError"]

RETRY_S = 5.0
"""Minimum delay between two attempts to create the producer."""
COALESCE_S = 0.01
"""Fire-and-forget records are handed to the worker thread at most this long after the call."""

log = logging.getLogger(__name__)
Record = tuple[bytes, bytes]


class SinkError(RuntimeError):
    """Kafka is unreachable or did not acknowledge every record in time."""


class KafkaSink:
    """Sends keyed records to ``settings.events_topic``.

    Parameters
    ----------
    settings
        Supplies ``kafka_bootstrap`` and ``events_topic``.
    timeout_s
        Bound on :meth:`deliver` (waiting for the broker's acknowledgements).
    max_backlog
        Fire-and-forget hand-overs queued at most; further ones are dropped and reported.
    on_dropped
        Called with the number of records dropped or failed by fire-and-forget sends.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = 10.0,
        max_backlog: int = 1000,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.topic = settings.events_topic
        self._bootstrap = settings.kafka_bootstrap.split(",")
        self._timeout_s, self._max_backlog = timeout_s, max_backlog
        self._on_dropped = on_dropped or (lambda n: None)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-sink")
        self._producer: KafkaProducer | None = None
        self._failed_at = -RETRY_S
        self._backlog = 0
        self._lock = threading.Lock()
        self._collected: list[Record] = []
        self._hand_over_at: asyncio.TimerHandle | None = None

    async def deliver(self, records: Sequence[Record]) -> None:
        """Send ``records`` and wait until the broker acknowledged all of them.

        Raises
        ------
        SinkError
            If Kafka is unreachable, a record failed or the acknowledgements took too long.
        """
        loop = asyncio.get_running_loop()
        self._hand_over()  # what was fired before goes first
        try:
            sent = await loop.run_in_executor(self._pool, self._send_all, records)
            acks = [_bridge(loop, future) for future in sent]
            await asyncio.wait_for(asyncio.gather(*acks), self._timeout_s)
        except SinkError:
            raise
        except Exception as exc:  # kafka errors, timeouts: all mean "not delivered"
            raise SinkError(f"{type(exc).__name__}: {exc}") from exc

    def fire(self, records: Sequence[Record]) -> None:
        """Send ``records`` in the background (call it on the event loop); losses are
        counted, never raised."""
        self._collected.extend(records)
        if self._hand_over_at is None:
            loop = asyncio.get_running_loop()
            self._hand_over_at = loop.call_later(COALESCE_S, self._hand_over)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the queued sends and flush and close the producer (from
        any thread, once the event loop fires no more)."""
        records, self._collected = self._collected, []
        self._submit(records)
        self._pool.shutdown(wait=True)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
            self._producer = None

    def _hand_over(self) -> None:
        """Give the collected fire-and-forget records to the worker thread."""
        if self._hand_over_at is not None:
            self._hand_over_at.cancel()
            self._hand_over_at = None
        records, self._collected = self._collected, []
        self._submit(records)

    def _submit(self, records: list[Record]) -> None:
        if not records:
            return
        with self._lock:
            if self._backlog >= self._max_backlog:
                self._on_dropped(len(records))
                return
            self._backlog += 1
        self._pool.submit(self._fire, records)

    def _fire(self, records: Sequence[Record]) -> None:
        try:
            for future in self._send_all(records):
                future.add_errback(lambda _exc: self._on_dropped(1))
        except Exception as exc:
            log.warning("impressions not sent: %s: %s", type(exc).__name__, exc)
            self._on_dropped(len(records))
        finally:
            with self._lock:
                self._backlog -= 1

    def _send_all(self, records: Sequence[Record]) -> list[Any]:
        """In the worker thread: hand every record to the producer (no waiting for acks)."""
        producer = self._ensure_producer()
        return [producer.send(self.topic, value=value, key=key) for key, value in records]

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is not None:
            return self._producer
        if time.monotonic() - self._failed_at < RETRY_S:
            raise SinkError("Kafka unreachable (retrying shortly)")
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                linger_ms=5,
                acks=1,
                max_block_ms=5000,
                bootstrap_timeout_ms=5000,
                request_timeout_ms=10000,
                delivery_timeout_ms=15000,
            )
        except Exception as exc:
            self._failed_at = time.monotonic()
            raise SinkError(f"Kafka unreachable: {type(exc).__name__}: {exc}") from exc
        return self._producer


def _bridge(loop: asyncio.AbstractEventLoop, future: Any) -> asyncio.Future[Any]:
    """An asyncio future completed by a kafka-python send future's callbacks."""
    done: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if done.done():
            return
        if failed:
            done.set_exception(outcome)
        else:
            done.set_result(outcome)

    future.add_callback(lambda meta: loop.call_soon_threadsafe(settle, meta, False))
    future.add_errback(lambda exc: loop.call_soon_threadsafe(settle, exc, True))
    return done
