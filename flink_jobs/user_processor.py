"""The keyed operator: per-user features and one online-MF step per event, top-N refreshes.

Input 1 (keyed by pseudonymous user): validated events, each one :data:`EVENT_TYPE` string.
Input 2 (broadcast): item-delta batches read back from the item-sync topic.
Output: item-delta batches (text) for the item-sync topic. Lists go to Redis directly from the
refresh, since a list write is an idempotent overwrite. Side output
:data:`~flink_jobs.item_neighbours.ITEM_CONTEXT`: one item-context record per learnable event
(the item-to-item lists, :mod:`flink_jobs.item_neighbours`).

State: the per-user :class:`~flink_jobs.user_state.UserState` (keyed ``ValueState`` with TTL),
when an experiment runs the user's last impressions (:mod:`flink_jobs.arm_tracker`),
the shared item table (broadcast ``MapState``: item id -> float32 factors + bias, and the
item's purchase and rebuy counts while the repeat term weighs rebuy rates, see
:mod:`flink_jobs.item_sync`), pending processing-time timers (one per dirty user, aligned to the
coalescing interval). In memory only, rebuilt after a restore: the local item table, the
clustered top-N index (:mod:`online_models.candidates`), decoded states of recently active
users (:mod:`flink_jobs.state_cache`, a cache over the Flink state), the refresh queue and
the windowed trending counts (trending restarts empty after a restore and refills from new
events), and the lists last written per user for the live quality test
(:mod:`flink_jobs.live_quality`, at most ``quality_users_max`` users; after a restore a user's
events count as not evaluated until the list is rewritten).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import redis
from pyflink.common import Row, Types
from pyflink.datastream import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor
from threadpoolctl import threadpool_limits

from connectors.redis_lists import (
    SCENES,
    TRENDING_SUFFIX,
    ListWriter,
    features_suffix,
    rec_suffix,
)
from flink_jobs import profiling
from flink_jobs.arm_tracker import ArmTracker
from flink_jobs.category_lists import CategoryLists
from flink_jobs.collector import paused, tune_collector
from flink_jobs.item_neighbours import ITEM_CONTEXT, context_record, encode_context
from flink_jobs.item_sync import ItemReplica, decode_batch, encode_batch
from flink_jobs.live_quality import JobQuality
from flink_jobs.parse import decode_event
from flink_jobs.refresh import RefreshQueue, build_lists, make_index
from flink_jobs.state_cache import DecodedStates
from flink_jobs.state_descriptors import BYTES, bytes_state
from flink_jobs.user_state import decode_state, encode_state, purchase_mark, rebuy_rates
from flywheel.settings import ACTIONS, Settings
from monitoring.metrics import job_metrics, release, serve
from online_models.implicit_mf import ImplicitMF
from online_models.item_table import CatalogueFull
from online_models.popularity import WindowedPopularity

__all__ = ["EVENT_TYPE", "ITEMS_DESCRIPTOR", "UserProcessor"]

# one JSON array (flink_jobs.parse.encode_event): event_id, user, item, action, ts, scene,
# category, brand, price, ingest_ms, experiment, arm, shown (a list impression's items, else [])
EVENT_TYPE = Types.STRING()
ITEMS_DESCRIPTOR = MapStateDescriptor("items", Types.STRING(), BYTES)
_MAX_UNPUBLISHED = 2048
_MAX_BATCH_USERS = 1024
_TRENDING_EVERY_MS = 1000


class UserProcessor(KeyedBroadcastProcessFunction):
    """Learns from each accepted event and keeps the user's Redis list fresh."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        s = self.settings
        self.user_state = runtime_context.get_state(bytes_state("user", s.state_ttl_s))
        self.model = ImplicitMF(
            n_factors=s.n_factors, learning_rate=s.learning_rate, l2=s.l2,
            n_negatives=s.n_negatives, action_weights=s.action_weights,
            init_std=s.init_std, seed=s.seed, max_items=s.max_items,
        )  # fmt: skip
        self.replica = ItemReplica(
            self.model.items, _subtask_index(runtime_context), rebuy_rates(s)
        )
        self.popularity = WindowedPopularity(s.trending_window_s)
        self.queue = RefreshQueue(s.coalesce_ms, _MAX_BATCH_USERS)
        self.index = make_index(s)
        self.states = DecodedStates(s.state_cache_users)
        threadpool_limits(s.blas_threads, "blas")  # process-wide: small products, shared cores
        tune_collector()  # process-wide: rare full collections (flink_jobs.collector)
        self.redis = redis.Redis.from_url(s.redis_url)
        self.writer = ListWriter(self.redis, s.redis_prefix, s.list_ttl_s)
        write_categories = s.category_trending_s > 0 and self.replica.origin == 0  # one writer
        self.category_lists = (
            CategoryLists(self.redis, self.writer, s.category_trending_s, s.top_n)
            if write_categories
            else None
        )
        self.metrics = job_metrics()
        self._accepted = {a: self.metrics.events.labels(a, "accepted") for a in ACTIONS}
        serve(s.metrics_port, s.metrics_bind, s.metrics_port_span)
        self.quality = JobQuality(s, self.metrics) if s.quality_k else None  # live HR/NDCG@K
        experiment = s.experiment_spec
        self.arms = ArmTracker(s, experiment, runtime_context, self.metrics) if experiment else None
        self._restored = False
        self._last_publish = time.monotonic()
        self._trending: list[tuple[str, float]] = []
        self._trending_at = 0.0
        profiling.start(s.profile_dir, "users")  # opt-in (flink_jobs.profiling)

    def close(self) -> None:
        profiling.stop()
        release()
        arms = getattr(self, "arms", None)
        if arms is not None:
            arms.close()
        client = getattr(self, "redis", None)
        if client is not None:
            client.close()

    # --- input 1: events -------------------------------------------------------------------
    def process_element(self, record: str, ctx: Any):
        self._restore_items(ctx)
        value = decode_event(record)
        event_id, user, item, action, ts, _scene, category, _brand, _price, ingest = value[:10]
        shown = tuple(value[12])  # a list impression's items, () for other events
        if action == "forget":
            self._forget(user)
            return
        raw = self.user_state.value()
        state = self.states.take(user, raw, self.settings)
        if event_id in state.recent_ids:
            self.metrics.events.labels(action, "duplicate").inc()
            self.states.put(user, raw, state)  # unchanged
            return
        state.recent_ids.append(event_id)
        if self.arms:  # per-arm counts of the experiment (impressions, attributed actions)
            self.arms.observe(action, item, ts, value[10], value[11], shown)
        del state.recent_ids[: -self.settings.dedupe_window or None]
        if self.quality:  # test, then train: the lists served so far meet the event first
            self.quality.test(user, item, action, state)
        state.n_events += 1
        purchase = purchase_mark(state.features, item, action)  # before the counts change
        if not state.features.add(item, action, ts, category, len(shown) or 1):
            self.metrics.late_events.inc()
        weight = self.model.weight_of(action)
        pairs = None
        if weight > 0:  # one item-context record per learnable event (item-to-item lists)
            pairs = context_record(state.context, item, ts, weight, self.popularity.weight)
        if weight > 0:
            if state.vector is None:
                state.vector = self.model.new_user_vector(user)
            try:
                deltas = self.model.update(state.vector, item, weight, event_id)
            except CatalogueFull:  # features still count it; the model cannot hold the item
                self.metrics.items_refused.inc()
            else:
                self.replica.record_own(deltas, weight, ts, category or "", purchase)
                self.metrics.model_updates.inc()
                if self.index is not None:
                    self.index.note_positives((self.model.items.index[item],))
        raw = encode_state(state)
        self.user_state.update(raw)
        self.states.put(user, raw, state)
        self._accepted[action].inc()  # the labelled child, looked up once in open()
        if weight > 0:  # impressions change no ranking: no refresh (they are the most events)
            queued = user in self.queue.dirty
            due = self.queue.mark(user, state, self.settings, ingest, ts)
            if not queued:  # one timer per user per batch (a re-registration is a wasted call)
                ctx.timer_service().register_processing_time_timer(due)
        if self.queue.is_due(int(time.time() * 1000)):
            self._refresh()
        if pairs is not None:  # keyed by item into the item-to-item lists
            yield ITEM_CONTEXT, Row(pairs[0], encode_context(pairs))
        yield from self._publish(force=False)

    # --- input 2: item deltas from every subtask -------------------------------------------
    def process_broadcast_element(self, value: str, ctx: Any):
        self._restore_items(ctx)
        batch = decode_batch(value)
        refused = self.replica.refused
        changed = self.replica.apply_published(batch)
        if self.replica.refused > refused:
            self.metrics.items_refused.inc(self.replica.refused - refused)
        for i, weight in enumerate(batch.weights.tolist()):
            if weight > 0:
                self.popularity.add(batch.items[i], weight, int(batch.ts[i]), batch.category(i))
        if changed:  # one call into the state backend per batch, not one per item
            entries = self.replica.shared_entries(changed)
            ctx.get_broadcast_state(ITEMS_DESCRIPTOR).put_all(entries)
        self.metrics.item_sync_batches.labels("received").inc()
        self.metrics.items.set(len(self.model.items))
        self._current_trending()  # rate-limited: trending lists follow the deltas as they come
        yield from ()

    # --- timers: coalesced refreshes ---------------------------------------------------------
    def on_timer(self, timestamp: int, ctx: Any):
        # the key is read (a call into Java) only for a timer older than this queue's batches
        user = ctx.get_current_key() if self.queue.restored(timestamp) else None
        if user is not None and user not in self.queue.dirty:
            state = decode_state(self.user_state.value(), self.settings)  # its batch was lost
            if state.n_events:
                now = int(time.time() * 1000)
                due = self.queue.mark(user, state, self.settings, now, 0)
                ctx.timer_service().register_processing_time_timer(due)
        if self.queue.is_due(int(time.time() * 1000)):
            self._refresh()
        yield from self._publish(force=True)

    # --- helpers -----------------------------------------------------------------------------
    def _forget(self, user: str) -> None:
        """Right to be forgotten: drop the user's state, queued refresh and Redis keys."""
        self.user_state.clear()
        self.states.drop(user)
        if self.quality:
            self.quality.forget(user)
        if self.arms:
            self.arms.forget()
        self.queue.dirty.pop(user, None)
        prefix = self.settings.redis_prefix
        keys = [f"{prefix}:{rec_suffix(scene, user)}" for scene in SCENES]
        self.redis.delete(*keys, f"{prefix}:{features_suffix(user)}")
        self.metrics.events.labels("forget", "accepted").inc()

    def _publish(self, force: bool):
        due = time.monotonic() - self._last_publish >= self.settings.item_sync_flush_ms / 1000
        if self.replica.unpublished and (
            force or due or self.replica.unpublished >= _MAX_UNPUBLISHED
        ):
            batch = self.replica.take_batch()
            self._last_publish = time.monotonic()
            if batch is not None:
                self.metrics.item_sync_batches.labels("sent").inc()
                yield encode_batch(batch)

    @paused()  # one pair per listed item: no collection scanning them (collector.py)
    def _refresh(self) -> None:
        started = time.perf_counter()
        batch = self.queue.take()
        items, trending = self.model.items, self._current_trending()
        served: dict[str, list[tuple[str, float]]] | None = {} if self.quality else None
        lists = build_lists(
            batch, items, trending, self.settings, self.index, served, self.replica.rebuys
        )
        entries = []
        for user, _, value in lists:
            entries.append((rec_suffix("home", user), value))
            entries.append((features_suffix(user), orjson.dumps(batch[user].features())))
        for strategy, n in Counter(strategy for _, strategy, _ in lists).items():
            self.metrics.lists_written.labels(strategy).inc(n)
        self.writer.write_batch(entries)
        written = time.time()
        if self.quality and served is not None:  # the lists the users' next events meet
            self.quality.personal(served, written)
            self.quality.export(len(items), written)
        for dirty in batch.values():
            for ingest in dirty.ingest_ms:
                self.metrics.freshness.observe(max(0.0, written - ingest / 1000))
        self.metrics.topn_batch_users.observe(len(batch))
        self.metrics.topn_batch_seconds.observe(time.perf_counter() - started)

    def _current_trending(self) -> list[tuple[str, float]]:
        now = time.monotonic()
        if now - self._trending_at >= _TRENDING_EVERY_MS / 1000:
            self._trending = self.popularity.top(self.settings.top_n * 2)
            self._trending_at = now
            trending = orjson.dumps(self._trending[: self.settings.top_n])
            self.writer.write_batch([(TRENDING_SUFFIX, trending)])
            if self.category_lists is not None:
                self.category_lists.maybe_write(self.popularity, now)
            if self.quality:
                self.quality.trending(self._trending[: self.settings.top_n], time.time())
        return self._trending

    def _restore_items(self, ctx: Any) -> None:
        if self._restored:
            return
        self._restored = True
        for item, value in ctx.get_broadcast_state(ITEMS_DESCRIPTOR).items():
            self.replica.restore_entry(item, bytes(value))
        self.metrics.items.set(len(self.model.items))


def _subtask_index(runtime_context: RuntimeContext) -> int:
    """Index of this subtask (Flink 2.0's embedded context lacks the old getter)."""
    java_context = getattr(runtime_context, "_runtime_context", None)
    if java_context is not None:
        return int(java_context.getTaskInfo().getIndexOfThisSubtask())
    return runtime_context.get_index_of_this_subtask()
