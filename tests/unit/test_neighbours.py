"""Item-to-item neighbours: the user context, decayed bounded counts, and the job's helpers
(the side-output record, the state encoding, the coalescing write queue)."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from flink_jobs.item_neighbours import (
    ListQueue,
    context_record,
    decode_counts,
    encode_counts,
)
from flywheel.settings import load_settings
from online_models.neighbours import ItemContext, NeighbourCounts

HOUR_MS = 3_600_000


def test_context_pairs_only_items_within_the_gap_newest_first() -> None:
    ctx = ItemContext(size=5, gap_ms=HOUR_MS)
    ctx.push("a", 0, 1.0)
    ctx.push("b", HOUR_MS // 2, 4.0)
    context = ctx.push("c", HOUR_MS + 1, 1.0)  # a is 1 ms too old, b is within the gap
    assert context == [("b", 2.0)]
    # an out-of-order event pairs with items shortly *after* it too
    assert [x for x, _ in ctx.push("d", HOUR_MS // 2 + 1, 1.0)] == ["c", "b", "a"]


def test_context_keeps_distinct_items_with_their_strongest_action() -> None:
    ctx = ItemContext(size=3, gap_ms=HOUR_MS)
    ctx.push("a", 0, 0.5)
    ctx.push("b", 1, 1.0)
    ctx.push("a", 2, 4.0)  # a again: moves to newest, keeps the purchase weight
    assert ctx.push("c", 3, 1.0) == [("a", 2.0), ("b", 1.0)]
    assert ctx.push("a", 4, 0.5) == [("c", math.sqrt(0.5 * 1.0)), ("b", math.sqrt(0.5))]
    assert [e[0] for e in ctx.entries] == ["b", "c", "a"]
    ctx.push("d", 5, 1.0)
    assert [e[0] for e in ctx.entries] == ["c", "a", "d"], "bounded to size, oldest dropped"


def test_context_round_trips_and_size_zero_is_off() -> None:
    ctx = ItemContext(size=2, gap_ms=HOUR_MS)
    for i, item in enumerate("abc"):
        ctx.push(item, i, 1.0)
    back = ItemContext(size=2, gap_ms=HOUR_MS).load(orjson.loads(orjson.dumps(ctx.to_list())))
    assert back.entries == ctx.entries
    assert [e[0] for e in ItemContext(size=1).load(ctx.to_list()).entries] == ["c"]
    off = ItemContext(size=0)
    assert off.push("a", 0, 1.0) == [] and off.push("b", 1, 1.0) == [] and off.entries == []


def test_counts_decay_with_the_half_life() -> None:
    nb = NeighbourCounts(max_neighbours=10, half_life_s=3600)
    nb.add(0, 1.0, [("x", 2.0, 1.0)])
    nb.add(2 * HOUR_MS, 1.0, [("y", 1.0, 1.0)])
    assert nb.decayed("x") == pytest.approx(0.5)  # two half-lives: 2.0 / 4
    assert nb.decayed("y") == pytest.approx(1.0)
    assert nb.n * 2.0 ** (-(nb.now - nb.landmark) / nb.half_life_ms) == pytest.approx(1.25)


def test_rescaling_a_far_landmark_keeps_the_values() -> None:
    long_ago = NeighbourCounts(max_neighbours=10, half_life_s=60)
    long_ago.add(0, 1.0, [("x", 1.0, 1.0)])
    ts = 40 * 60_000  # 40 half-lives later: beyond the rescale point
    long_ago.add(ts, 1.0, [("x", 1.0, 1.0), ("y", 1.0, 1.0)])
    assert long_ago.landmark == ts
    assert long_ago.decayed("x") == pytest.approx(1.0 + 2.0**-40)
    assert long_ago.decayed("y") == pytest.approx(1.0)


def test_the_list_normalises_by_popularity_so_blockbusters_do_not_dominate() -> None:
    nb = NeighbourCounts()
    for i in range(30):
        context = [("blockbuster", 1.0, 10_000.0)]
        if i % 3 == 0:
            context.append(("niche", 1.0, 15.0))
        nb.add(i, 1.0, context)
    assert nb.decayed("blockbuster") > nb.decayed("niche")
    assert [item for item, _ in nb.top(2)] == ["niche", "blockbuster"]
    # unknown popularity (0) never replaces a known one
    nb.add(31, 1.0, [("niche", 1.0, 0.0)])
    assert nb.counts["niche"][1] == 15.0


def test_memory_is_bounded_and_strong_neighbours_survive_pruning() -> None:
    rng = random.Random(3)
    nb = NeighbourCounts(max_neighbours=20, half_life_s=86400)
    sizes = []
    for step in range(2000):
        context = [(f"noise-{rng.randrange(10_000)}", 1.0, 1.0)]
        if step % 10 == 0:
            context.append(("strong", 1.0, 1.0))
        nb.add(step, 1.0, context)
        sizes.append(len(nb))
    assert max(sizes) <= 40
    assert min(sizes[100:]) >= 20
    assert nb.top(1)[0][0] == "strong"


def test_a_stream_of_view_pairs_puts_the_earlier_item_on_the_later_items_list() -> None:
    contexts = {u: ItemContext(size=5, gap_ms=HOUR_MS) for u in range(40)}
    lists: dict[str, NeighbourCounts] = {}
    rng = random.Random(0)
    for user, ctx in contexts.items():
        items = ["a", "b"] if user % 4 else [f"other-{rng.randrange(5)}", "b"]
        for step, item in enumerate(items):
            pairs = ctx.push(item, user * 10 + step, 0.5)
            popularity = 40.0 if item == "b" else 30.0
            lists.setdefault(item, NeighbourCounts()).add(
                user * 10 + step, 0.5, [(x, w, popularity) for x, w in pairs]
            )
    assert lists["b"].top(1)[0][0] == "a"
    assert len(lists["a"]) == 0  # one record per event: "a" learns only what came before it


def test_the_record_and_the_state_round_trip() -> None:
    settings = load_settings(neighbour_context=3, neighbour_gap_s=60, neighbour_max=5)
    ctx = ItemContext(settings.neighbour_context, settings.neighbour_gap_s * 1000)
    popularity = {"tea": 12.0}
    assert context_record(ctx, "tea", 0, 1.0, popularity.get) == ("tea", 0, 1.0, "[]")
    item, ts, weight, pairs = context_record(ctx, "cups", 1000, 4.0, popularity.get) or ("",)
    assert (item, ts, weight) == ("cups", 1000, 4.0)
    assert orjson.loads(pairs) == [["tea", 2.0, 12.0]]
    counts = decode_counts(None, settings)
    counts.add(ts, weight, [tuple(p) for p in orjson.loads(pairs)])
    back = decode_counts(encode_counts(counts), settings)
    assert back.top(5) == counts.top(5) == [("tea", round(2.0 / math.sqrt(4.0 * 12.0), 5))]
    assert back.max_neighbours == 5
    off = ItemContext(0, 60_000)
    assert context_record(off, "tea", 0, 1.0, popularity.get) is None


def test_the_write_queue_coalesces_items_into_one_batch_per_interval() -> None:
    queue = ListQueue(interval_ms=1000, max_items=3)
    first, second = NeighbourCounts(), NeighbourCounts()
    assert queue.mark("a", first, now_ms=100) == 1100
    assert queue.mark("b", NeighbourCounts(), now_ms=500) == 1100, "joins the open batch"
    assert queue.mark("a", second, now_ms=900) == 1100
    assert not queue.is_due(1099) and queue.is_due(1100)
    batch = queue.take()
    assert list(batch) == ["a", "b"] and batch["a"] is second, "the newest snapshot is written"
    assert queue.mark("a", first, now_ms=1200) == 2200, "the next batch is one interval later"
    queue.mark("b", first, now_ms=1201)
    queue.mark("c", first, now_ms=1202)
    assert queue.is_due(1203), "a full batch is due at once"
