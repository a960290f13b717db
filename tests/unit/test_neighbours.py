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
)
from flink_jobs.neighbour_state import encode_snapshot
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
    assert nb.pops["niche"] == 15.0


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
    back = decode_counts(encode_snapshot(counts), settings)
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


def test_only_timers_due_before_the_first_batch_count_as_restored() -> None:
    queue = ListQueue(interval_ms=1000, max_items=2)
    assert queue.restored(5_000), "no batch opened yet: any timer comes from a checkpoint"
    assert queue.mark("a", NeighbourCounts(), now_ms=100) == 1100
    queue.mark("b", NeighbourCounts(), now_ms=150)
    queue.take()  # full: written before its timers fire
    assert queue.mark("c", NeighbourCounts(), now_ms=200) == 1200
    queue.take()
    assert not queue.restored(1100), "a late timer of a batch written two batches ago"
    assert not queue.restored(1200)
    assert queue.restored(1099), "due before this queue's first batch: its batch was lost"


Context = list[tuple[str, float, float]]


def _stream(rng: random.Random, steps: int) -> list[tuple[int, float, Context]]:
    """Events on one item: time, weight, context (a few of 300 items, popularity may change)."""
    events, ts = [], 0
    for step in range(steps):
        ts += rng.choice([1_000, 60_000, HOUR_MS]) if step % 500 else 50 * HOUR_MS  # rescales
        context = [
            (f"x{rng.randrange(300)}", rng.choice([0.5, 1.0, 2.0]), float(rng.randrange(0, 60)))
            for _ in range(rng.randrange(0, 4))
        ]
        events.append((ts, rng.choice([0.0, 0.5, 1.0, 4.0]), context))
    return events


@pytest.mark.parametrize("seed", range(4))
def test_an_update_reported_harmless_leaves_the_written_list_right(seed: int) -> None:
    rng = random.Random(seed)
    nb = NeighbourCounts(max_neighbours=30, half_life_s=3600)
    written, mark = nb.publish(10)
    rewrites = 0
    for ts, weight, context in _stream(rng, 3000):
        if nb.add(ts, weight, context, mark):
            written, mark = nb.publish(10)
            rewrites += 1
            continue
        now = nb.top(10)
        assert [x for x, _ in now] == [x for x, _ in written], "same items, same order"
        for (_, fresh), (_, old) in zip(now, written, strict=True):
            assert abs(fresh - old) <= 0.05 * old + 1e-5, "scores within 5 % (and rounding)"
    assert 0 < rewrites < 3000, "some updates are skipped, some are not"


@pytest.mark.parametrize("seed", range(3))
def test_lists_published_from_memory_equal_lists_from_a_fresh_decode(seed: int) -> None:
    """publish() keeps each neighbour's ranking key between calls (add() updates it, prunes,
    rescales and loads drop it): every list and mark must equal those of the same counts
    decoded afresh, which rank from scratch."""
    rng = random.Random(seed)
    nb = NeighbourCounts(max_neighbours=30, half_life_s=3600)
    mark = nb.publish(10)[1]
    prunes = 0
    for ts, weight, context in _stream(rng, 2000):
        before = len(nb)
        nb.add(ts, weight, context, mark)
        prunes += len(nb) < before
        fresh = NeighbourCounts(30, 3600).load(orjson.loads(orjson.dumps(nb.to_dict())))
        ranked, mark = nb.publish(10)
        assert (ranked, mark) == fresh.publish(10)
    assert prunes > 0, "the stream prunes, so the kept keys are dropped and rebuilt"


def test_a_context_item_reaching_a_full_list_makes_it_stale() -> None:
    nb = NeighbourCounts(max_neighbours=10, half_life_s=86400)
    nb.add(0, 1.0, [("a", 3.0, 1.0), ("b", 2.0, 1.0), ("c", 1.0, 1.0)])
    written, mark = nb.publish(2)
    assert [x for x, _ in written] == ["a", "b"] and mark.threshold == 2.0
    assert not nb.add(1, 0.0, [("c", 0.5, 1.0)], mark), "c at 1.5 stays below b"
    assert nb.add(2, 0.0, [("c", 1.0, 1.0)], mark), "c at 2.5 overtakes b"
    assert [x for x, _ in nb.top(2)] == ["a", "c"]
    _, mark = nb.publish(2)
    assert not nb.add(3, 0.0, [("b", 0.0, 4.0)], mark), "b, off the list, only falls further"
    assert nb.add(4, 0.0, [("c", 0.0, 400.0)], mark), "c, on the list, falls off it"
    assert [x for x, _ in nb.top(2)] == ["a", "b"]


def test_a_short_list_changes_with_any_neighbour_and_its_scores_with_the_own_weight() -> None:
    nb = NeighbourCounts(max_neighbours=10, half_life_s=86400)
    nb.add(0, 1.0, [("a", 1.0, 1.0)])
    _, mark = nb.publish(5)
    assert mark.threshold == -math.inf
    assert nb.add(1, 1.0, [("z", 0.01, 1000.0)], mark), "a new neighbour joins a short list"
    _, mark = nb.publish(5)
    assert not nb.add(2, 0.0, [], mark), "nothing changed"
    stale = [nb.add(3 + i, 0.05, [], mark) for i in range(10)]  # own weight grows: scores fall
    assert stale[0] is False and stale[-1] is True, "rewritten once the scores moved > 5 %"
    empty = NeighbourCounts()
    empty.add(0, 1.0, [])
    _, mark = empty.publish(5)
    assert not any(empty.add(i, 1.0, [], mark) for i in range(1, 50)), "no neighbours: no list"


def test_the_queue_remembers_a_bounded_number_of_written_lists_for_a_while() -> None:
    queue = ListQueue(interval_ms=1000, max_marks=2, mark_ttl_ms=60_000)
    nb = NeighbourCounts()
    nb.add(0, 1.0, [("a", 1.0, 1.0)])
    _, mark = nb.publish(5)
    for item in ("x", "y", "x", "z"):
        queue.written(item, mark, now_ms=0)
    assert queue.written_mark("y", 1) is None, "the least recently written is forgotten first"
    assert queue.written_mark("x", 1) == mark and queue.written_mark("z", 59_999) == mark
    assert queue.written_mark("z", 60_000) is None, "the list's key may have expired: rewrite"


def test_pruning_a_listed_neighbour_makes_the_list_stale() -> None:
    nb = NeighbourCounts(max_neighbours=2, half_life_s=86400)
    nb.add(0, 1.0, [("niche", 1.0, 1.0)] + [(f"hit{i}", 3.0, 10_000.0) for i in range(3)])
    written, mark = nb.publish(1)
    assert written[0][0] == "niche", "little evidence, but a rare item: the best score"
    assert nb.add(1, 0.0, [("hit3", 3.0, 10_000.0)], mark), "pruning drops the listed niche"
    assert "niche" not in nb.pairs and nb.top(1)[0][0].startswith("hit")


def test_state_in_the_earlier_layout_reads_back_as_the_same_counts() -> None:
    """Snapshots written before the parallel lists (``"c": {x: [pair, popularity]}``) still
    restore: same neighbours, weights, popularities and lists, in the same order."""
    rng = random.Random(5)
    nb = NeighbourCounts(max_neighbours=30, half_life_s=3600)
    for ts, weight, context in _stream(rng, 400):
        nb.add(ts, weight, context)
    earlier = {
        "l": nb.landmark, "t": nb.now, "n": nb.n,
        "c": {x: [nb.pairs[x], nb.pops[x]] for x in nb.pairs},
    }  # fmt: skip
    back = NeighbourCounts(30, 3600).load(orjson.loads(orjson.dumps(earlier)))
    assert back.to_dict() == nb.to_dict()
    assert back.publish(10) == nb.publish(10)
    assert orjson.dumps(nb.to_dict()).startswith(b'{"l":'), "the current layout is written"
    assert len(orjson.dumps(nb.to_dict())) < len(orjson.dumps(earlier)), "and it is smaller"
