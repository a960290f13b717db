"""Per-arm counts of the configured experiment, kept by the keyed user operator.

:class:`ArmTracker` counts, per arm of the experiment in ``FLYWHEEL_EXPERIMENT``, the
impressions the API logged and the clicks, cart adds and purchases attributed to them
(rule: :mod:`online_models.attribution`, window ``attribution_window_s``). Impressions naming
another experiment or an unknown arm are ignored, so metric labels stay bounded. Counts go to
Prometheus (``flywheel_job_arm_*_total``) at once and to the Redis hash
``{prefix}:arms:{experiment}`` (:mod:`connectors.arm_counts`) in batches.

State kept:

- keyed, per user: ``ValueState`` ``impressions`` with the user's impression log, at most
  ``attribution_impressions_max`` records of 22 bytes, expiring ``attribution_window_s`` after
  its last write (an older impression can no longer be credited anyway);
- keyed, per user: ``ValueState`` ``held_actions`` with the clicks, cart adds and purchases
  that found no impression to credit, in case their impression arrives after them
  (:func:`online_models.attribution.settle`, ``attribution_grace_ms``), at most
  :data:`HELD_MAX` records of 17 bytes, expiring a minute after its last write;
- in memory, per subtask: increments not yet written to Redis (at most four per arm), written
  by a background thread every :data:`FLUSH_S` with one pipelined round trip, and on close.

Per event: an impression costs one state read and write (a bytes append), a list impression
(the API logs one per served list) the same for all its items, plus one read of the held
actions (a write when it credits or expires some); a click, cart add or purchase one state
read, and a write of the log when credited or of the held actions when not; other actions
nothing.

Delivery: the Redis counts are cumulative and at-least-once. After a restore from a
checkpoint, the events replayed since that checkpoint are counted again, and increments
buffered at a crash are lost; the keyed impression logs themselves are exact (checkpointed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import redis
from pyflink.datastream import RuntimeContext

from connectors.arm_counts import COUNT_OF_ACTION, add_counts
from flink_jobs.state_descriptors import bytes_state
from flywheel.settings import Settings
from monitoring.metrics import JobMetrics
from online_models.attribution import (
    ATTRIBUTED,
    attribute,
    hold,
    key_of,
    record_impressions,
    settle,
)
from online_models.experiments import Experiment

__all__ = ["FLUSH_S", "HELD_MAX", "ArmTracker"]

FLUSH_S = 0.5
"""Seconds between writes of the buffered counts to Redis (the API re-reads them every 1 s)."""
HELD_MAX = 32
"""Actions held per user while they wait for their impression (17 bytes each)."""
_log = logging.getLogger(__name__)


class ArmTracker:
    """Counts one experiment's arms from the events of the user being processed."""

    def __init__(
        self,
        settings: Settings,
        experiment: Experiment,
        runtime_context: RuntimeContext,
        metrics: JobMetrics,
    ) -> None:
        self.name = experiment.name
        self._arms = experiment.arms
        self._index = {arm: i for i, arm in enumerate(experiment.arms)}
        self._key = key_of(experiment.name, 4)
        self._max = settings.attribution_impressions_max
        self._window_ms = settings.attribution_window_s * 1000
        self._skew_ms = settings.out_of_orderness_ms
        self._grace_ms = settings.attribution_grace_ms
        self._prefix = settings.redis_prefix
        ttl_s = max(60, settings.attribution_window_s)
        self.state = runtime_context.get_state(bytes_state("impressions", ttl_s))
        self.held = runtime_context.get_state(bytes_state("held_actions", 60))
        metrics.init_experiment(experiment.name, experiment.arms)
        self._counters = {
            "impression": [metrics.arm_impressions.labels(self.name, a) for a in self._arms],
            "click": [metrics.arm_clicks.labels(self.name, a) for a in self._arms],
            **{
                action: [metrics.arm_conversions.labels(self.name, a, action) for a in self._arms]
                for action in ("add_to_cart", "purchase")
            },
        }
        self._fields = {
            action: [f"{arm}:{COUNT_OF_ACTION[action]}" for arm in self._arms]
            for action in self._counters
        }
        self._pending: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._redis = redis.Redis.from_url(settings.redis_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arm-counts", daemon=True)
        self._thread.start()

    def observe(
        self, action: str, item: str, ts: int, experiment: str, arm: str, shown: Sequence[str] = ()
    ) -> None:
        """Count an accepted (not duplicate) event of the current user; ``shown`` holds the
        items of a list impression (then one impression per item), else ``item`` is the one."""
        if action == "impression":
            index = self._index.get(arm) if experiment == self.name else None
            if index is None:
                return
            raw = self.state.value()
            keys = [key_of(i) for i in shown] if shown else [key_of(item)]
            log = record_impressions(
                bytes(raw) if raw else None, keys, ts, self._key, index, self._max
            )
            self._count(action, index, len(keys))
            if self._grace_ms and (held := self.held.value()):
                log, still, settled = settle(
                    log, bytes(held), keys, self._key, ts,
                    self._window_ms, self._skew_ms, self._grace_ms,
                )  # fmt: skip
                if len(still) != len(held):
                    self._update_held(still)
                for held_action, arm_index in settled:
                    self._count(held_action, arm_index)
            self.state.update(log)
        elif action in ATTRIBUTED:
            raw = self.state.value()
            key = key_of(item)
            credited = (
                attribute(bytes(raw), key, self._key, action, ts, self._window_ms, self._skew_ms)
                if raw
                else None
            )
            if credited is not None:
                log, index = credited
                self.state.update(log)
                self._count(action, index)
            elif self._grace_ms:
                held = self.held.value()
                self.held.update(
                    hold(bytes(held) if held else None, key, action, ts, self._grace_ms, HELD_MAX)
                )

    def forget(self) -> None:
        """Drop the current user's impression log and held actions (right to be forgotten)."""
        self.state.clear()
        self.held.clear()

    def close(self) -> None:
        """Stop the writer thread and write what is still buffered."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        self._redis.close()

    def flush(self) -> None:
        """Write the buffered increments to Redis in one round trip (kept on failure)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            add_counts(self._redis, self._prefix, pending)
        except redis.RedisError as exc:
            _log.warning("per-arm counts not written to Redis (kept for the next try): %s", exc)
            with self._lock:
                for key, n in pending.items():
                    self._pending[key] = self._pending.get(key, 0) + n

    def _update_held(self, held: bytes) -> None:
        if held:
            self.held.update(held)
        else:
            self.held.clear()

    def _count(self, action: str, index: int, n: int = 1) -> None:
        self._counters[action][index].inc(n)
        key = (self.name, self._fields[action][index])
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + n

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()
