"""Producing the API's records to Kafka without blocking the event loop.

kafka-python's producer is synchronous: ``send()`` may block on metadata and the producer's
constructor blocks on bootstrapping. Every producer call therefore runs in one dedicated worker
thread (so the records of one call keep their order); acknowledgements come back to the event
loop through the send futures' callbacks.

The producer is created on first use, so the API starts and serves lists while Kafka is
down; after a failed creation it is retried at most every :data:`RETRY_S`. Memory is bounded
by the producer's own buffer plus at most ``max_backlog`` queued fire-and-forget calls.
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

__all__ = ["RETRY_S", "KafkaSink", "SinkError"]

RETRY_S = 5.0
"""Minimum delay between two attempts to create the producer."""

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
        Fire-and-forget calls queued at most; further ones are dropped and reported.
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

    async def deliver(self, records: Sequence[Record]) -> None:
        """Send ``records`` and wait until the broker acknowledged all of them.

        Raises
        ------
        SinkError
            If Kafka is unreachable, a record failed or the acknowledgements took too long.
        """
        loop = asyncio.get_running_loop()
        try:
            sent = await loop.run_in_executor(self._pool, self._send_all, records)
            acks = [_bridge(loop, future) for future in sent]
            await asyncio.wait_for(asyncio.gather(*acks), self._timeout_s)
        except SinkError:
            raise
        except Exception as exc:  # kafka errors, timeouts: all mean "not delivered"
            raise SinkError(f"{type(exc).__name__}: {exc}") from exc

    def fire(self, records: Sequence[Record]) -> None:
        """Send ``records`` in the background; losses are counted, never raised."""
        with self._lock:
            if self._backlog >= self._max_backlog:
                self._on_dropped(len(records))
                return
            self._backlog += 1
        self._pool.submit(self._fire, records)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the queued sends and flush and close the producer."""
        self._pool.shutdown(wait=True)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
            self._producer = None

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
