"""First operator: validate raw payloads, pseudonymise users, split off dead letters.

Stateless. Accepted events continue as ``Row(user, event)``, keyed by its first field on the
Java side; rejected payloads leave through the side output :data:`DEAD_LETTERS` as dead-letter
records (original payload + reason + detail) and are counted by reason.

The event is one string (:data:`~flink_jobs.user_processor.EVENT_TYPE`): the parsed fields as
one JSON array (:func:`encode_event`), decoded once by the keyed operator
(:func:`decode_event`). It crosses between Python and Java, and through Flink's serializers,
as one field instead of thirteen.

A list impression (``item_ids``, one event per served list) stays one record: its ``item`` field
is the first item shown and its last field the whole list (an empty list for an event about one
item). The keyed operator expands it only where it needs per-item impressions: the impression
counts and the per-arm impression log. One record per list keeps a user's state read and
written once per list, not once per item.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext

from flink_jobs import profiling
from flink_jobs.collector import tune_collector
from flywheel.events import Event, Rejection, check_event, dead_letter
from flywheel.settings import Settings
from monitoring.metrics import job_metrics, release, serve

__all__ = ["DEAD_LETTERS", "ParseEvents", "decode_event", "encode_event"]

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class ParseEvents(ProcessFunction):
    """Validates each payload; accepted events carry their Kafka ingest time (ms)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        tune_collector()
        self.metrics = job_metrics()
        serve(
            self.settings.metrics_port, self.settings.metrics_bind, self.settings.metrics_port_span
        )
        profiling.start(self.settings.profile_dir, "parse")  # opt-in (flink_jobs.profiling)

    def close(self) -> None:
        profiling.stop()
        release()

    def process_element(self, value: str, ctx: Any):
        now_ms = int(time.time() * 1000)
        parsed = check_event(value, self.settings, now_ms)
        if isinstance(parsed, Rejection):
            self.metrics.dead_letters.labels(parsed.reason).inc()
            self.metrics.events.labels("unknown", "dead_letter").inc()
            yield DEAD_LETTERS, dead_letter(value, parsed, now_ms).decode()
            return
        ingest = ctx.timestamp() or now_ms
        yield Row(parsed.user, encode_event(parsed, int(ingest)))


def encode_event(event: Event, ingest_ms: int) -> str:
    """The record of an accepted event: a JSON array of event_id, user, item, action, ts,
    scene, category, brand, price, ingest_ms, experiment, arm and the items shown (a list
    impression's; ``[]`` otherwise).

    >>> encode_event(Event("e1", "u", "tea", "view", 5, items=("tea", "cups")), 7)
    '["e1","u","tea","view",5,"","","",-1.0,7,"","",["tea","cups"]]'
    """
    return orjson.dumps((
        event.event_id, event.user, event.item, event.action, event.ts,
        event.scene, event.category, event.brand, event.price, ingest_ms,
        event.experiment, event.arm, event.items,
    )).decode()  # fmt: skip


def decode_event(record: str) -> list[Any]:
    """The fields of :func:`encode_event`'s record, in its order (the items shown a list).

    >>> decode_event('["e1","u","tea","view",5,"","","",-1.0,7,"","",[]]')[9:]
    [7, '', '', []]
    """
    return orjson.loads(record)
