"""Memory benchmark: bytes per user in Flink state and in Redis, bytes per item.

Users (:mod:`bench.user_data`, the job's own per-event state logic, no Flink) come from three
passes, with the default bounds of :class:`~flywheel.settings.Settings`:

- ``completejourney``: all 1.47 M real purchase lines of the 84.51 Complete Journey data
  set (2,469 households, a year each: heavy users, most at the state's caps). These give the
  headline keys;
- ``synthetic``: :class:`~connectors.datasets.SyntheticShop` with 20k users and 100k items,
  400k events over 7 days (log-normal activity: many light users, a few heavy ones);
- ``completejourney_groceries``: Complete Journey again with ``exclude_purchased=False``, the
  groceries configuration, whose users also keep the repeat term's per-item purchase counts.

For each stream:

- **Flink state**: the length of :func:`flink_jobs.user_state.encode_state` of every user
  (the bytes of the user's ``ValueState``; the state backend's own per-entry overhead: key,
  TTL timestamp, map entry, is not included), mean / p99 / max, and the size of a user at
  every cap (:func:`state_at_caps`, with the stream's longest ids);
- **Redis**: every user's home list and features, built by the job's refresh code and written
  with the job's writer (TTL set) into a fresh Redis; ``MEMORY USAGE`` of both keys per user
  (mean, p99), and the growth of ``used_memory`` per user (which also counts the key tables
  and the expiry entries).

Items: ``tracemalloc`` around filling one subtask's replica (:class:`ItemReplica`: a local
and a shared :class:`ItemTable`) with 100k items, plus the bytes of one broadcast-state entry
(:meth:`ItemReplica.shared_entry` and its key, with the item's purchase and rebuy counts when
the settings keep them), the trending counter's cost of one item, and the item rebuy rates'
cost of one bought item (:class:`~online_models.rebuy_rates.ItemRebuyRates`, kept while the
repeat term weighs them; counted in ``memory.item_bytes``).
The initialiser's table of normals (16 MiB per process, whatever the catalogue) is drawn
before tracing, so it is not charged to the items.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis

from bench.common import Results, say
from bench.user_data import Replay, item_table, replay, written_entries
from connectors.datasets import SyntheticShop, completejourney_events
from connectors.redis_lists import ListWriter
from deploy.local_stack import free_port, start_redis
from flink_jobs.item_sync import ItemReplica
from flink_jobs.user_state import UserState, decode_state, encode_state, rebuy_rates
from flywheel.settings import Settings, load_settings
from online_models.features import BUCKETS
from online_models.item_table import ItemTable
from online_models.popularity import WindowedPopularity
from online_models.rebuy_rates import ItemRebuyRates

__all__ = ["run", "state_at_caps", "state_parts"]

SYN_USERS, SYN_ITEMS, SYN_EVENTS, SYN_DAYS = 20_000, 100_000, 400_000, 7
TABLE_ITEMS = 100_000
HEADLINE = "completejourney"
_ACTIONS = ("view", "click", "add_to_cart", "purchase")
_USAGE_CHUNK = 2_000


def state_at_caps(
    settings: Settings, id_chars: int, item_chars: int, category_chars: int, per_slot: int = 10
) -> UserState:
    """A user whose every bounded field is full: ``dedupe_window`` event ids, ``recent``,
    ``purchased``, ``cart``, ``categories`` and the item context at their caps, every action
    in every bucket of every window (``per_slot`` times), and a vector.

    Ids are zero-padded to the given lengths (longer when needed to stay distinct), so the
    encoded size is about the largest a user of a stream with such ids can reach (counts
    with more digits than these would add a few bytes each).

    >>> from flywheel.settings import load_settings
    >>> s = load_settings(dedupe_window=8, purchased_max=3, recent_items_max=4)
    >>> state = state_at_caps(s, id_chars=5, item_chars=4, category_chars=3)
    >>> len(state.recent_ids), len(state.features.purchased), len(state.features.recent)
    (8, 3, 4)
    """
    end = 1_700_006_400_000  # a multiple of every bucket width of whole-hour windows
    slots = sorted(
        {end - j * (w * 1000 // BUCKETS) for w in settings.windows_s for j in range(BUCKETS + 2)}
    )
    caps = (settings.dedupe_window, settings.recent_items_max, settings.categories_max)
    n_fill = max(*caps, len(_ACTIONS) * settings.purchased_max)
    times = [slots[0]] * n_fill + [t for t in slots for _ in range(per_slot * len(_ACTIONS))]
    width = len(str(len(times)))
    state, weights = decode_state(None, settings), settings.action_weights
    for k, ts in enumerate(times):
        category = str(k % (settings.categories_max + 1)).zfill(max(category_chars, width))
        item, action = str(k).zfill(max(item_chars, width)), _ACTIONS[k % len(_ACTIONS)]
        state.features.add(item, action, ts, category)
        if weights.get(action, 0.0) > 0:
            state.context.push(item, ts, weights[action])
        state.recent_ids.append(str(k).zfill(max(id_chars, width)))
    del state.recent_ids[: -settings.dedupe_window or None]
    state.vector, state.n_events = np.zeros(settings.n_factors, np.float32), len(times)
    return state


def _streams(
    settings: Settings, groceries: Settings
) -> Iterator[tuple[str, Iterable[dict[str, Any]], Settings]]:
    """(name, events, settings) of the passes, headline first; ``completejourney_groceries``
    replays Complete Journey with ``groceries`` (purchased items kept in the lists, so the
    repeat term's per-user counts are in the state)."""
    yield HEADLINE, completejourney_events(None, Path("var/data")), settings
    rate = SYN_EVENTS / (SYN_DAYS * 86400)
    shop = SyntheticShop(SYN_USERS, SYN_ITEMS, seed=11, rate_per_s=rate)
    yield "synthetic", shop.events(SYN_EVENTS), settings
    yield f"{HEADLINE}_groceries", completejourney_events(None, Path("var/data")), groceries


def _longest(values: Iterable[str]) -> int:
    return max((len(v) for v in values), default=1)


def state_parts(state: UserState) -> dict[str, int]:
    """Bytes of the parts of a user's encoded state (JSON of each; the rest is syntax).

    >>> from flywheel.settings import load_settings
    >>> state = decode_state(None, load_settings())
    >>> state.recent_ids = ["e1", "e2"]
    >>> state_parts(state)["event_ids"]
    11
    """
    f = state.features
    return {
        "event_ids": len(orjson.dumps(state.recent_ids)),
        "purchased": len(orjson.dumps(f.purchased)),
        "recent": len(orjson.dumps(f.recent)),
        "categories": len(orjson.dumps(f.categories)),
        "windows": len(orjson.dumps(f.to_dict()["buckets"])),
        "context": len(orjson.dumps(state.context.to_list())),
        "repeats": len(orjson.dumps(f.repeats.to_list())) if f.repeats.entries else 0,
        "vector": 0 if state.vector is None else 4 * len(state.vector),
    }


def _state_figures(name: str, out: Replay, settings: Settings) -> Results:
    sizes = np.array([len(encode_state(s)) for s in out.states.values()], dtype=np.float64)
    states = out.states.values()
    caps = state_at_caps(
        settings,
        id_chars=_longest(i for s in states for i in s.recent_ids),
        item_chars=_longest(out.items),
        category_chars=_longest(c for s in states for c in s.features.categories),
    )
    events = np.array([s.n_events for s in states], dtype=np.float64)
    p = f"memory.{name}"
    parts: dict[str, float] = {}
    for state in states:
        for part, size in state_parts(state).items():
            parts[part] = parts.get(part, 0.0) + size
    shares = {f"{p}.state_bytes_{k}_mean": round(v / len(states), 1) for k, v in parts.items()}
    return {
        **shares,
        f"{p}.users": len(out.states),
        f"{p}.events": out.accepted,
        f"{p}.events_per_user_mean": round(float(events.mean()), 1),
        f"{p}.events_per_user_p99": round(float(np.percentile(events, 99)), 1),
        f"{p}.flink_state_bytes_mean": round(float(sizes.mean()), 1),
        f"{p}.flink_state_bytes_p50": round(float(np.percentile(sizes, 50)), 1),
        f"{p}.flink_state_bytes_p99": round(float(np.percentile(sizes, 99)), 1),
        f"{p}.flink_state_bytes_max": int(sizes.max()),
        f"{p}.flink_state_bytes_at_caps": len(encode_state(caps)),
    }


@contextmanager
def _fresh_redis(work: Path) -> Iterator[redis.Redis]:
    service = start_redis(free_port(), work / "logs")
    client = redis.Redis(host="127.0.0.1", port=service.port)
    try:
        yield client
    finally:
        client.close()
        service.stop()


def _used_memory(client: redis.Redis) -> int:
    return int(cast("dict[str, Any]", client.info("memory"))["used_memory"])


def _memory_usage(client: redis.Redis, keys: list[str]) -> np.ndarray:
    """``MEMORY USAGE key SAMPLES 0`` of every key, pipelined in chunks."""
    out: list[int] = []
    for start in range(0, len(keys), _USAGE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + _USAGE_CHUNK]:
            pipe.memory_usage(key, samples=0)
        out.extend(int(v) for v in pipe.execute())
    return np.array(out, dtype=np.float64)


def _redis_figures(name: str, out: Replay, settings: Settings, client: redis.Redis) -> Results:
    """Write every user's list and features as the job does; measure them in Redis."""
    items = item_table(out.items, settings)
    trending = out.trending(settings)
    client.flushall()
    before = _used_memory(client)
    writer = ListWriter(client, settings.redis_prefix, settings.list_ttl_s)
    lists: list[str] = []
    features: list[str] = []
    value_bytes = [0, 0]
    for batch in written_entries(out.states, items, trending, settings):
        writer.write_batch(batch)
        for suffix, value in batch:
            is_list = suffix.startswith("rec:")
            (lists if is_list else features).append(f"{settings.redis_prefix}:{suffix}")
            value_bytes[0 if is_list else 1] += len(value)
    grown = _used_memory(client) - before
    list_usage, feature_usage = _memory_usage(client, lists), _memory_usage(client, features)
    per_user = list_usage + feature_usage
    n, p = len(lists), f"memory.{name}"
    return {
        f"{p}.redis_bytes_per_user": round(float(per_user.mean()), 1),
        f"{p}.redis_bytes_per_user_p99": round(float(np.percentile(per_user, 99)), 1),
        f"{p}.redis_list_bytes_mean": round(float(list_usage.mean()), 1),
        f"{p}.redis_features_bytes_mean": round(float(feature_usage.mean()), 1),
        f"{p}.list_value_bytes_mean": round(value_bytes[0] / n, 1),
        f"{p}.features_value_bytes_mean": round(value_bytes[1] / n, 1),
        f"{p}.redis_used_memory_per_user": round(grown / n, 1),
    }


def _traced(build: Any) -> tuple[Any, int]:
    """``build()`` and the bytes it left allocated (tracemalloc, numpy buffers included)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        made = build()
        return made, tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def _item_figures(settings: Settings, n: int, prefix: str = "memory") -> Results:
    def table() -> ItemTable:
        return item_table((f"i{k}" for k in range(n)), settings)

    def replica() -> ItemReplica:
        out = ItemReplica(table(), 0, rebuy_rates(settings))
        for k in range(n):  # the shared table gets its own id strings (decoded from Kafka)
            out.shared.ensure(f"i{k}")
        return out

    def rebuys() -> ItemRebuyRates | None:
        counts = rebuy_rates(settings)
        if counts is not None:
            for k in range(n):
                counts.add(f"i{k}", False)  # every item bought once: its counts exist
        return counts

    def popularity() -> WindowedPopularity:
        pop = WindowedPopularity(settings.trending_window_s)
        for k in range(n):
            pop.add(f"i{k}", 1.0, 1_700_000_000_000)
        return pop

    item_table(["warm-up"], settings)  # the initialiser's shared normal table, drawn once
    one, one_bytes = _traced(table)
    both, both_bytes = _traced(replica)
    _, pop_bytes = _traced(popularity)
    _, rebuy_bytes = _traced(rebuys)
    item = both.shared.ids[-1]
    if both.rebuys is not None:
        both.rebuys.add(item, False)  # so the entry carries its counts, as a bought item's does
    entry = len(both.shared_entry(item)) + len(item.encode())
    per_replica = both_bytes / n
    return {
        f"{prefix}.items": n,
        f"{prefix}.item_table_bytes_per_item": round(one_bytes / n, 1),
        f"{prefix}.item_table_array_bytes_per_item": round(one.nbytes() / n, 1),
        f"{prefix}.item_array_bytes_in_use": 4 * (settings.n_factors + 1),
        f"{prefix}.item_replica_bytes_per_item": round(per_replica, 1),
        f"{prefix}.item_broadcast_entry_bytes": entry,
        f"{prefix}.item_trending_bytes": round(pop_bytes / n, 1),
        f"{prefix}.item_rebuy_bytes": round(rebuy_bytes / n, 1),
        f"{prefix}.item_bytes": round(per_replica + rebuy_bytes / n + entry, 1),
    }


def run(quick: bool = False, into: Results | None = None, work: Path | None = None) -> Results:
    """Measure users (both streams) and items; ``memory.*`` keys.

    ``quick`` changes nothing (the figures are sizes, not rates; the run takes ~2-3 min).
    Keys are added to ``into`` as soon as they are measured.
    """
    del quick
    settings = load_settings(redis_prefix="bench-mem")
    work = work or Path("var/bench") / f"memory-{time.strftime('%Y%m%d-%H%M%S')}"
    results: Results = {} if into is None else into
    results.update({
        "memory.n_factors": settings.n_factors,
        "memory.dedupe_window": settings.dedupe_window,
        "memory.recent_items_max": settings.recent_items_max,
        "memory.purchased_max": settings.purchased_max,
        "memory.categories_max": settings.categories_max,
        "memory.top_n": settings.top_n,
        "memory.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    groceries = load_settings(redis_prefix="bench-mem", exclude_purchased=False)
    say(f"memory: {TABLE_ITEMS:,} items in one subtask's replica (tracemalloc)")
    results.update(_item_figures(settings, TABLE_ITEMS))
    results.update(_item_figures(groceries, TABLE_ITEMS, "memory.groceries"))
    say(f"memory: {results['memory.item_bytes']:,.0f} bytes per item per subtask "
        f"({results['memory.groceries.item_bytes']:,.0f} with the item rebuy rates)")  # fmt: skip
    with _fresh_redis(work) as client:
        info = cast("dict[str, Any]", client.info("server"))
        results["memory.redis_version"] = str(info["redis_version"])
        for name, events, pass_settings in _streams(settings, groceries):
            say(f"memory: replaying {name} through the job's per-user logic")
            out = replay(events, pass_settings)
            results.update(_state_figures(name, out, pass_settings))
            say(f"memory: {name}: {len(out.states):,} users; writing their lists and features")
            results.update(_redis_figures(name, out, pass_settings, client))
            p = f"memory.{name}"
            say(f"memory: {name}: Flink state {results[f'{p}.flink_state_bytes_mean']:,.0f} B/user "
                f"(p99 {results[f'{p}.flink_state_bytes_p99']:,.0f}), Redis "
                f"{results[f'{p}.redis_bytes_per_user']:,.0f} B/user")  # fmt: skip
    h = f"memory.{HEADLINE}"
    results["memory.flink_state_bytes_per_user"] = results[f"{h}.flink_state_bytes_mean"]
    results["memory.flink_state_bytes_per_user_p99"] = results[f"{h}.flink_state_bytes_p99"]
    results["memory.flink_state_bytes_at_caps"] = results[f"{h}.flink_state_bytes_at_caps"]
    results["memory.redis_bytes_per_user"] = results[f"{h}.redis_bytes_per_user"]
    return results
