"""Cost of the live prequential test in the job: ``python -m bench.live_quality [--no-save]``.

Times, on one core, what one scored event adds to UserProcessor
(:meth:`flink_jobs.live_quality.JobQuality.test`: the lookup of the user's served list, the
trending list, and the repeat test against the items the user's state remembers) for a user
remembering 50 recent items and either no or ``purchased_max`` (500) purchases, next to the
encoding of that user's state, work every event already does, in the same run. Also: one
event tested and its counts exported to Prometheus (an export runs once per refresh batch),
and the memory per user of the served lists (``tracemalloc``, top-K of ``users`` users, item
ids shared with the item table as in the job). Writes ``live_quality.*`` keys into
``bench/results/latest.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import tracemalloc

from prometheus_client import CollectorRegistry

from bench.common import Results, format_table, median_seconds, merge_results
from flink_jobs.live_quality import JobQuality
from flink_jobs.user_state import UserState, encode_state, new_features
from flywheel.settings import Settings, load_settings
from monitoring.metrics import JobMetrics

__all__ = ["main", "measure"]

_ITEMS = [f"sku-{i:07d}" for i in range(100_000)]


def _user(settings: Settings, purchases: int) -> UserState:
    state = UserState(new_features(settings), n_events=1)
    for i in range(settings.recent_items_max):
        state.features.add(_ITEMS[i], "view", 1_700_000_000_000, "")
    for i in range(purchases):
        state.features.add(_ITEMS[1000 + i], "purchase", 1_700_000_000_000, "")
    state.recent_ids = [f"{i:032x}" for i in range(settings.dedupe_window)]
    return state


def _bytes_per_user(settings: Settings, users: int) -> float:
    quality = JobQuality(settings, JobMetrics(CollectorRegistry()))
    names = [f"{u:032x}" for u in range(users)]
    ranked = {u: [(_ITEMS[(7 * n + j) % len(_ITEMS)], 0.5) for j in range(settings.top_n)]
              for n, u in enumerate(names)}  # fmt: skip
    tracemalloc.start()
    for user in names:
        quality.live.personal(user, [i for i, _ in ranked[user][: quality.k]], 0.0)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / users


def measure(users: int = 100_000) -> Results:
    """The figures: microseconds per call, bytes per user."""
    settings = load_settings()
    quality = JobQuality(settings, JobMetrics(CollectorRegistry()))
    quality.personal({"u": [(item, 1.0) for item in _ITEMS[500:550]]}, now_s=0.0)
    quality.trending([(item, 1.0) for item in _ITEMS[:50]], now_s=0.0)
    results: Results = {}
    for label, purchases in (("", 0), ("_500_purchases", settings.purchased_max)):
        state = _user(settings, purchases)
        missing = _ITEMS[-1]  # a miss: every list and both remembered lists are scanned

        def test(state: UserState = state, missing: str = missing) -> None:
            quality.test("u", missing, "click", state)

        def encode(state: UserState = state) -> bytes:
            return encode_state(state)

        results[f"live_quality.test{label}_us"] = round(median_seconds(test) * 1e6, 2)
        results[f"live_quality.encode_state{label}_us"] = round(median_seconds(encode) * 1e6, 2)

    def test_and_export() -> None:  # an export with new counts (one refresh after one event)
        quality.test("u", _ITEMS[520], "click", state)
        quality.export(len(_ITEMS), 1.0)

    results["live_quality.test_and_export_us"] = round(median_seconds(test_and_export) * 1e6, 2)
    results["live_quality.bytes_per_user"] = round(_bytes_per_user(settings, users))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live_quality", description=__doc__)
    parser.add_argument("--users", type=int, default=100_000, help="users in the memory test")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    results = measure(args.users)
    print(format_table(results))
    if not args.no_save:
        merge_results(results)


if __name__ == "__main__":
    main()
