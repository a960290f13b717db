"""Thresholds of CPython's cyclic garbage collector in the interpreter that runs the operators.

The job keeps a large, churning set of long-lived Python objects: decoded user states
(:mod:`flink_jobs.state_cache`), neighbour counts and list marks, the item index. With
CPython's default thresholds (700, 10, 10) the collector ran ~70 young collections a second on
the pipeline benchmark, and a full one (a walk over every tracked object, with the interpreter
lock held) every ~10 s, each a ~0.5 s pause of the whole job (in thread mode all operators
share this interpreter): ~7 % of the job's Python time, and freshness outliers.

The job's data is freed by reference counting; the collector is only needed for reference
cycles, which the per-event path does not create. :func:`tune_collector` sets
``(YOUNG, 10, OLD)``: short-lived objects die before a young collection sees them, far fewer
survive into the old generation, and a full collection is considered only after ``OLD``
middle ones. What that bounds: cyclic garbage waits at most ``YOUNG`` net allocations of
container objects for a young collection, and, once old, at most ``YOUNG * 10 * OLD`` (20M;
minutes at the benchmark's rate) for a full one. State: none (a process-wide setting that
every operator's ``open`` applies; idempotent).

:func:`paused` goes further for one bounded piece of work that allocates many short-lived
containers at once: a top-N refresh builds one ``(item, score)`` pair per listed item for up
to 1,024 users (~50,000 tuples, alive until the batch is encoded), which alone crossed
``YOUNG`` twice per batch, each time scanning those tuples. With the collector paused for the
refresh, they are freed before it can run. Measured on the pipeline benchmark's full-length
throughput phase (2026-11-23, with a temporary ``gc.callbacks`` timing hook, not kept): 712
young and 64 middle collections, 4.7 s, per 300k events without it; 176 and 16, 2.2 s, with
it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["OLD", "YOUNG", "paused", "tune_collector"]

YOUNG = 20_000
OLD = 100


def tune_collector() -> None:
    """Set this interpreter's collector thresholds to ``(YOUNG, 10, OLD)``.

    >>> tune_collector(); gc.get_threshold() == (YOUNG, 10, OLD)
    True
    """
    gc.set_threshold(YOUNG, 10, OLD)


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside the block (process-wide, so in thread mode the other
    operators' allocations wait too); the collector's previous state comes back after it,
    also on error. Allocations keep counting, so a collection due meanwhile runs at the next
    allocation after the block, when the block's temporary objects are already gone.

    >>> tune_collector()
    >>> with paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
