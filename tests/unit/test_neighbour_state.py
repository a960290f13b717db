"""Item-to-item state layout: a snapshot, then a log of recent events (neighbour_state)."""

from __future__ import annotations

import random

import orjson

from flink_jobs.item_neighbours import decode_counts, encode_context
from flink_jobs.neighbour_state import MAX_LOGGED, LoggedCounts, decode_logged, encode_snapshot
from flywheel.settings import load_settings
from online_models.neighbours import ListMark, NeighbourCounts

SETTINGS = load_settings(neighbour_max=6, neighbour_half_life_s=60)
MINUTE_MS = 60_000


def _events(n: int, seed: int) -> list[tuple[str, int, float, str]]:
    """Item-context records: a few items, many neighbours (prunes), gaps of up to an hour
    (rescales after 32 half-lives), unknown popularities (0) among the known."""
    rng, ts, records = random.Random(seed), 1_700_000_000_000, []
    for _ in range(n):
        ts += rng.choice([0, 1, 1_000, MINUTE_MS, 40 * MINUTE_MS]) - rng.choice([0, 0, 0, 500])
        pairs = [
            [f"x{rng.randrange(40)}", rng.random() * 2, rng.choice([0.0, 1.0, rng.random() * 50])]
            for _ in range(rng.randrange(6))
        ]
        item = f"item {rng.randrange(3)}"
        weight = rng.choice([0.5, 1.0, 3.0, rng.random() * 3, 1e-7 * rng.random(), 1e17])
        records.append((item, ts, weight, orjson.dumps(pairs).decode()))
    return records


def _add(
    state: LoggedCounts,
    raw: bytes | None,
    ts: int,
    weight: float,
    context: str,
    mark: ListMark | None = None,
) -> tuple[bytes, bool]:
    """The operator's step: the item-context record as it arrives, learnt and logged."""
    record = encode_context(("an item", ts, weight, context))
    return state.add(raw, orjson.loads(record), record, mark)


def _old_step(raw: bytes | None, record: tuple[str, int, float, str], mark: ListMark | None):
    """What the operator did before the log: decode the JSON, add, encode it all again."""
    counts = NeighbourCounts(SETTINGS.neighbour_max, SETTINGS.neighbour_half_life_s)
    if raw:
        counts.load(orjson.loads(raw))
    _, ts, weight, context = record
    stale = counts.add(ts, weight, orjson.loads(context), mark)
    return encode_snapshot(counts), stale, counts


def test_the_log_gives_bit_for_bit_the_counts_and_staleness_of_an_encode_per_event() -> None:
    rng = random.Random(3)
    old: dict[str, bytes] = {}
    new: dict[str, bytes] = {}
    held: dict[str, LoggedCounts] = {}
    marks: dict[str, ListMark] = {}
    folds = appends = 0
    for record in _events(3_000, seed=1):
        item = record[0]
        mark = marks.get(item)
        old[item], old_stale, old_counts = _old_step(old.get(item), record, mark)
        state = held.pop(item, None)
        if state is None or rng.random() < 0.3:  # a cache miss: decode Flink's bytes
            state = decode_logged(new.get(item), SETTINGS)
        raw, stale = _add(state, new.get(item), *record[1:], mark)
        new[item], held[item] = raw, state
        folds, appends = folds + (b"\n" not in raw), appends + (b"\n" in raw)
        assert stale == old_stale
        assert encode_snapshot(state.counts) == old[item]
        assert encode_snapshot(decode_counts(raw, SETTINGS)) == old[item]
        if rng.random() < 0.2:  # a list written: both sides get the same mark
            (ranked, mark), (new_ranked, new_mark) = old_counts.publish(5), state.counts.publish(5)
            assert (ranked, mark) == (new_ranked, new_mark)
            marks[item] = mark
    assert folds > 50 and appends > 1_000  # both paths were exercised


def test_a_full_item_folds_every_max_logged_events_and_stays_bounded() -> None:
    settings = load_settings(neighbour_max=100)
    counts = NeighbourCounts(settings.neighbour_max, settings.neighbour_half_life_s)
    for k in range(60):
        counts.add(k, 1.0, [(f"neighbour-{k}", 1.0, 3.0)])
    raw: bytes | None = encode_snapshot(counts)
    state = decode_logged(raw, settings)
    small = orjson.dumps([["neighbour-1", 0.5, 2.0]]).decode()
    logged, sizes = [], []
    for k in range(3 * MAX_LOGGED + 3):
        raw, _ = _add(state, raw, 100 + k, 1.0, small)
        logged.append(state.logged)
        snapshot = raw.split(b"\n")[0]
        sizes.append((len(raw), len(snapshot), len(raw.split(b"\n")) - 1))
    assert logged[: MAX_LOGGED + 2] == [*range(1, MAX_LOGGED + 1), 0, 1]
    for total, snapshot_len, lines in sizes:
        assert lines <= MAX_LOGGED
        assert total <= 2 * snapshot_len + len(small) + 30  # log no longer than the snapshot
    assert decode_logged(raw, settings).logged == state.logged


def test_a_log_may_not_outgrow_its_snapshot() -> None:
    state = decode_logged(None, SETTINGS)
    raw, _ = _add(state, None, 0, 1.0, "[]")
    assert state.logged == 0 and raw == encode_snapshot(state.counts)
    big = orjson.dumps([[f"n{k}", 1.0, 2.0] for k in range(5)]).decode()
    raw, _ = _add(state, raw, 1, 1.0, big)  # longer than the tiny snapshot: fold instead
    assert b"\n" not in raw and state.logged == 0
    raw, _ = _add(state, raw, 2, 1.0, orjson.dumps([["n1", 1.0, 2.0]]).decode())
    assert raw.count(b"\n") == 1 and state.logged == 1
    assert state.log_bytes <= state.snapshot_bytes


def test_a_value_written_before_the_log_reads_as_a_snapshot() -> None:
    counts = NeighbourCounts(SETTINGS.neighbour_max, SETTINGS.neighbour_half_life_s)
    counts.add(5, 2.0, [("tea", 1.0, 4.0), ("cups", 2.0, 1.0)])
    legacy = orjson.dumps(counts.to_dict())
    state = decode_logged(legacy, SETTINGS)
    assert (state.logged, state.snapshot_bytes, state.log_bytes) == (0, len(legacy), 0)
    raw, _ = _add(state, legacy, 6, 1.0, orjson.dumps([["tea", 1.0, 4.0]]).decode())
    assert raw.startswith(legacy + b"\n")
    counts.add(6, 1.0, [("tea", 1.0, 4.0)])
    assert encode_snapshot(decode_counts(raw, SETTINGS)) == encode_snapshot(counts)


def test_item_ids_with_spaces_and_newlines_survive_the_log() -> None:
    state = decode_logged(None, SETTINGS)
    raw, _ = _add(
        state, None, 0, 1.0, orjson.dumps([[f"a b{k}", 1.0, 2.0] for k in range(6)]).decode()
    )
    odd = orjson.dumps([["line\nbreak x", 1.0, 2.0]]).decode()
    raw, _ = _add(state, raw, 1, 1.0, odd)
    assert state.logged == 1
    back = decode_counts(raw, SETTINGS)
    assert back.decayed("line\nbreak x") == state.counts.decayed("line\nbreak x") == 1.0
    assert encode_snapshot(back) == encode_snapshot(state.counts)


def test_a_snapshot_in_the_earlier_layout_with_a_log_reads_as_the_same_counts() -> None:
    counts = NeighbourCounts(SETTINGS.neighbour_max, SETTINGS.neighbour_half_life_s)
    counts.add(0, 1.0, [("tea", 2.0, 7.0), ("cups", 1.0, 0.0)])
    earlier = orjson.dumps({
        "l": counts.landmark, "t": counts.now, "n": counts.n,
        "c": {x: [counts.pairs[x], counts.pops[x]] for x in counts.pairs},
    })  # fmt: skip
    line = b'\n[1000,4.0,[["tea",1.0,9.0],["milk",2.0,3.0]]]'
    old, new = (
        decode_logged(earlier + line, SETTINGS),
        decode_logged(encode_snapshot(counts) + line, SETTINGS),
    )
    assert old.logged == new.logged == 1
    assert encode_snapshot(old.counts) == encode_snapshot(new.counts)
