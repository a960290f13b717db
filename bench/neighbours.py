"""Per-event cost of the item-to-item lists: ``python -m bench.neighbours [--no-save]``.

Times, on one core, what one learnable event adds to the job: on the users side, pushing the
item into the user's context and encoding the side-output record; on the item side, what
the job does per record with the item full (``2 * neighbour_max`` neighbours, the most it
ever holds): adding the context to the decoded counts and appending the record to the state
value, or, every so often, encoding the counts again (:mod:`flink_jobs.neighbour_state`; the
mean over many records, folds included), and building one list for Redis.
``neighbours.item_snapshot_bytes`` is the encoded full item, ``neighbours.item_state_bytes``
the largest state value seen (snapshot and a full log: what memory sizing assumes). Writes
``neighbours.*`` keys (microseconds) into ``bench/results/latest.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import random
from itertools import cycle

import orjson

from bench.common import Results, format_table, median_seconds, merge_results, say
from flink_jobs.item_neighbours import (
    context_record,
    decode_counts,
    encode_context,
)
from flink_jobs.neighbour_state import decode_logged, encode_snapshot
from flywheel.settings import load_settings
from online_models.neighbours import ItemContext, NeighbourCounts

__all__ = ["main", "measure"]


def _full_item(settings_max: int, rng: random.Random) -> NeighbourCounts:
    """An item holding ``2 * settings_max`` neighbours, just below the pruning point."""
    counts = NeighbourCounts(settings_max)
    for i in range(2 * settings_max):
        counts.add(1_700_000_000_000 + i, 1.0, [(f"sku-{i}", rng.random(), 10.0)])
    return counts


def measure() -> Results:
    """The figures, in microseconds per call."""
    settings = load_settings()
    rng = random.Random(0)
    context = ItemContext(settings.neighbour_context, settings.neighbour_gap_s * 1000)
    step = iter(range(10**9))
    popularity: dict[str, float] = {}

    def users_side() -> str | None:
        """The users operator's part: the context record and its side-output string."""
        i = next(step)
        record = context_record(
            context, f"sku-{i % 97}", 1_700_000_000_000 + i, 1.0, popularity.get
        )
        return encode_context(record) if record is not None else None

    raw = encode_snapshot(_full_item(settings.neighbour_max, rng))
    pairs = orjson.dumps([[f"sku-{i}", 1.0, 10.0] for i in range(settings.neighbour_context)])
    records = cycle([
        encode_context(("sku-x", 1_700_000_001_000 + i, 1.0, pairs.decode()))
        for i in range(4096)
    ])  # fmt: skip
    held = decode_logged(raw, settings)
    value, largest = raw, len(raw)  # the item's state value, as the job reads and writes it

    def item_side() -> None:
        """The item operator's part per record, as its process_element does it: the decoded
        counts reused (its cache), the record appended to the item's log or, every so often,
        the counts encoded again (a fold)."""
        nonlocal value, largest
        record = next(records)
        value, _ = held.add(value, orjson.loads(record), record)
        largest = max(largest, len(value))

    full = decode_counts(raw, settings)
    record = users_side()
    assert record is not None
    say(f"item state {len(raw)} bytes, record {len(record)} bytes")
    return {
        "neighbours.users_side_us": round(median_seconds(users_side) * 1e6, 2),
        "neighbours.item_update_us": round(median_seconds(item_side) * 1e6, 2),
        "neighbours.list_build_us": round(
            median_seconds(lambda: full.top(settings.top_n)) * 1e6, 2
        ),
        "neighbours.item_snapshot_bytes": len(raw),
        "neighbours.item_state_bytes": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.neighbours", description=__doc__)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    results = measure()
    print(format_table(results))
    if not args.no_save:
        merge_results(results)


if __name__ == "__main__":
    main()
