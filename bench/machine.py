"""How fast this machine runs the kind of Python the job runs: a reference figure for every run.

Machines of one kind differ: the same code measured 1.04 ms of CPU per event on one 2-core
host and 0.55 ms on another a day later. Figures from different runs are only comparable next
to a figure of the machine itself, measured the same way each time.
:func:`python_reference_ms` times a fixed single-threaded workload built from the operations
the job's Python spends its time on (JSON encoding and decoding of a state-sized document,
dict updates, small sorts, tuple building); every ``make bench`` run records it with the
machine's other facts (:func:`bench.common.machine_info`), and the docs quote it with each run.

``meta.python_ref_ms``: the median over :data:`REPEATS` repetitions of one pass of the
workload (lower is faster). It is a yardstick, not a model: it tells whether two runs' hosts
differ in single-threaded Python speed, not how each of the job's figures scales with it.
State: none.
"""

from __future__ import annotations

import random
import statistics
import time

import orjson

__all__ = ["REPEATS", "python_reference_ms"]

REPEATS = 7
_DOCUMENTS = 400  # one pass: ~42 ms on the 2026-11-23 host


def _workload(documents: list[dict[str, object]]) -> float:
    """One pass: per document an encode, a decode, counter updates, a sort and a list of
    pairs; returns a number derived from all of it (so nothing can be skipped)."""
    total = 0.0
    counts: dict[str, float] = {}
    for doc in documents:
        raw = orjson.dumps(doc)
        back = orjson.loads(raw)
        for item, weight in back["c"].items():
            counts[item] = counts.get(item, 0.0) + weight[0]
        ranked = sorted(back["c"].items(), key=lambda kv: -kv[1][0])[:50]
        pairs = [(item, round(w[0] / (1.0 + w[1]), 5)) for item, w in ranked]
        total += len(raw) + pairs[0][1] + len(counts)
    return total


def _documents(seed: int = 7) -> list[dict[str, object]]:
    """State-sized documents: 150 neighbours each, like a busy item of the job."""
    rng = random.Random(seed)
    return [
        {
            "l": 0,
            "n": rng.random(),
            "c": {f"i{rng.randrange(100_000)}": [rng.random(), rng.random()] for _ in range(150)},
        }
        for _ in range(_DOCUMENTS)
    ]


def python_reference_ms(repeats: int = REPEATS) -> float:
    """Median wall time of one pass of the workload, in ms (one thread; run it on a quiet
    machine, like the benchmarks).

    >>> python_reference_ms(repeats=1) > 0
    True
    """
    documents = _documents()
    _workload(documents)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _workload(documents)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    print(f"python reference pass: {python_reference_ms():.1f} ms (median of {REPEATS})")
