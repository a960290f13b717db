"""Send shopper events to the Kafka ``events`` topic.

:class:`EventProducer` wraps one kafka-python ``KafkaProducer``. Records are keyed by the
user's HMAC pseudonym (so all of a user's events land on one partition, in order, while raw ids
never become Kafka keys); the payload keeps the raw ``user_id``, which the job pseudonymises on
arrival. Delivery is asynchronous: failures are counted as they happen and :meth:`flush`
raises :class:`DeliveryError` if any record since the previous flush was lost.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaProducer

from flywheel.events import pseudonymise
from flywheel.settings import Settings

__all__ = ["DeliveryError", "EventProducer"]


class DeliveryError(RuntimeError):
    """Some records were not acknowledged by the broker."""


class EventProducer:
    """A keyed JSON event producer bound to one topic.

    Parameters
    ----------
    settings
        Supplies ``kafka_bootstrap``, ``events_topic`` and ``hmac_key``.
    topic
        Topic to write to; ``settings.events_topic`` when ``None``.
    linger_ms, acks, batch_size
        Passed to ``KafkaProducer``: a short linger batches bursts, ``acks=1`` waits for the
        partition leader only, large batches raise replay throughput (~25% at 256 KiB).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        *,
        linger_ms: int = 5,
        acks: int | str = 1,
        batch_size: int = 262_144,
    ) -> None:
        self.topic = topic or settings.events_topic
        self._hmac_key = settings.hmac_key
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            linger_ms=linger_ms,
            acks=acks,
            batch_size=batch_size,
        )
        self._failed = 0
        self._last_error: BaseException | None = None

    def send(self, event: dict[str, Any]) -> None:
        """Serialise ``event`` as JSON and send it keyed by its user's pseudonym."""
        key = pseudonymise(str(event["user_id"]), self._hmac_key).encode()
        self.send_raw(orjson.dumps(event), key)

    def send_raw(self, payload: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (tests use this for malformed payloads)."""
        future = self._producer.send(self.topic, value=payload, key=key)
        future.add_errback(self._on_error)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed.

        Raises
        ------
        DeliveryError
            If any record failed since the previous flush.
        """
        self._producer.flush(timeout=timeout)
        if self._failed:
            failed, error = self._failed, self._last_error
            self._failed, self._last_error = 0, None
            raise DeliveryError(f"{failed} record(s) to {self.topic!r} failed: {error!r}")

    def close(self, timeout: float | None = None) -> None:
        """Flush and close the underlying producer."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_error(self, error: BaseException) -> None:
        self._failed += 1
        self._last_error = error
