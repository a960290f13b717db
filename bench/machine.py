"""How fast this machine runs the kind of Python the job runs: a reference figure for every run.

Machines of one kind differ: the same commit measured 1.04 ms of CPU per event on one 2-core
host and 0.55 ms on another a day later. Figures from different runs are only comparable next
to a figure of the machine itself, measured the same way each time. :func:`reference` times a
fixed single-threaded workload built from the operations the job's Python spends its time on
(JSON encoding and decoding of a state-sized document, dict updates, small sorts, tuple
building) and reads the CPU's name; ``make bench`` records them as ``machine.*`` keys next to
the benchmarks' figures, and the docs quote them with each run.

``machine.python_ref_ms``: the median over :data:`REPEATS` repetitions of one pass of the
workload (lower is faster). A host that takes twice as long here should be expected to need
about twice the job's CPU per event. State: none.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from pathlib import Path

import orjson

__all__ = ["REPEATS", "cpu_model", "python_reference_ms", "reference"]

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


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("" when unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def reference() -> dict[str, object]:
    """The ``machine.*`` keys of a benchmark run."""
    return {
        "machine.python_ref_ms": round(python_reference_ms(), 1),
        "machine.cpu_model": cpu_model(),
        "machine.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


if __name__ == "__main__":
    print(orjson.dumps(reference(), option=orjson.OPT_INDENT_2).decode())
