"""First operator: validate raw payloads, pseudonymise users, split off dead letters.

Stateless. Accepted events continue as ``Row(user, event)``, the event an
:data:`~flink_jobs.user_processor.EVENT_TYPE` tuple, keyed by its first field on the Java side;
rejected payloads leave through the side output :data:`DEAD_LETTERS` as dead-letter records
(original payload + reason + detail) and are counted by reason.

A list impression (``item_ids``, one event per served list) stays one tuple: its ``item`` field
is the first item shown and its last field the whole list as a JSON array
(:func:`encode_shown`; ``""`` for an event about one item). The keyed operator expands it only
where it needs per-item impressions (:func:`decode_shown`): the impression counts and the
per-arm impression log. One tuple per list keeps a user's state read and written once per
list, not once per item.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext

from flink_jobs import profiling
from flink_jobs.collector import tune_collector
from flywheel.events import Rejection, check_event, dead_letter
from flywheel.settings import Settings
from monitoring.metrics import job_metrics, release, serve

__all__ = ["DEAD_LETTERS", "ParseEvents", "decode_shown", "encode_shown"]

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())


class ParseEvents(ProcessFunction):
    """Validates each payload; accepted events carry their Kafka ingest time (ms)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        tune_collector()
        self.metrics = job_metrics()
        serve(self.settings.metrics_port, self.settings.metrics_bind)
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
        yield Row(parsed.user, (
            parsed.event_id, parsed.user, parsed.item, parsed.action, parsed.ts,
            parsed.scene, parsed.category, parsed.brand, parsed.price, int(ingest),
            parsed.experiment, parsed.arm, encode_shown(parsed.items),
        ))  # fmt: skip


def encode_shown(items: tuple[str, ...]) -> str:
    """The tuple field of a list impression's items: a JSON array, ``""`` for no list.

    >>> encode_shown(("a", "b")), encode_shown(())
    ('["a","b"]', '')
    """
    return orjson.dumps(items).decode() if items else ""


def decode_shown(field: str) -> tuple[str, ...]:
    """The items of a list impression from :func:`encode_shown`'s field (``()`` for none).

    >>> decode_shown('["a","b"]'), decode_shown("")
    (('a', 'b'), ())
    """
    return tuple(orjson.loads(field)) if field else ()
