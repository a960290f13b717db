"""Opt-in cProfile of the job's Python operators, to find where its CPU goes.

With ``profile_dir`` set (``FLYWHEEL_PROFILE_DIR``), each operator calls :func:`start` at the
end of ``open()``. That enables a :class:`cProfile.Profile` on the calling thread: in thread
mode Flink calls an operator's ``open``, its elements and its timers from the operator's task
thread, so the profile sees every call of that operator and nothing of the others. A daemon
thread writes each profile to ``<profile_dir>/<operator>-<thread id>.prof`` every
:data:`DUMP_EVERY_S` seconds (replaced atomically, so a job that is killed leaves its last
dump); :func:`stop` in ``close()`` writes it once more. Read a dump with ``python -m pstats``
(``sort tottime``, ``stats 30``, ``callers <function>``); the counts are since ``open()``.

Times are wall clock: a call that waits for the interpreter lock (held by another operator's
thread) or for a Java call counts that wait. Profiling also slows the job down, several times
in code made of many small calls, so use it to rank functions and to count calls per event,
not to time the job (the pipeline benchmark's per-thread CPU split does that).

State: one profiler per profiled operator thread, whose statistics grow with the number of
distinct functions called, not with events; nothing when ``profile_dir`` is empty.
"""

from __future__ import annotations

import cProfile
import gc
import logging
import marshal
import os
import threading
import time
from pathlib import Path

__all__ = ["DUMP_EVERY_S", "start", "stop"]

DUMP_EVERY_S = 10.0

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_profiles: dict[Path, cProfile.Profile] = {}
_writer: threading.Thread | None = None


def start(profile_dir: str, operator: str) -> None:
    """Profile the calling thread into ``profile_dir`` (nothing when it is empty).

    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> start(directory, "demo"); sorted(x for x in range(3)); stop()
    [0, 1, 2]
    >>> import pstats; path = next(Path(directory).glob("demo-*.prof"))
    >>> any(name == "sorted" or "sorted" in name for _, _, name in pstats.Stats(str(path)).stats)
    True
    """
    global _writer
    if not profile_dir:
        return
    directory = Path(profile_dir)
    directory.mkdir(parents=True, exist_ok=True)
    profile = cProfile.Profile()
    with _lock:
        _profiles[directory / f"{operator}-{threading.get_ident()}.prof"] = profile
        if _writer is None:
            _writer = threading.Thread(target=_write_every, name="flywheel-profiles", daemon=True)
            _writer.start()
    profile.enable()


def stop() -> None:
    """Stop profiling the calling thread, if :func:`start` profiles it, and write its dump."""
    suffix = f"-{threading.get_ident()}.prof"
    with _lock:
        mine = {path: p for path, p in _profiles.items() if path.name.endswith(suffix)}
        for path in mine:
            del _profiles[path]
    for path, profile in mine.items():
        profile.disable()
        _write_safely(path, profile)


def _write_every() -> None:
    while True:
        time.sleep(DUMP_EVERY_S)
        with _lock:
            profiles = list(_profiles.items())
        for path, profile in profiles:
            _write_safely(path, profile)


def _write_safely(path: Path, profile: cProfile.Profile) -> None:
    """:func:`_write`, logging instead of raising when the file cannot be written (e.g. its
    directory was removed): profiling never stops the writer thread or an operator's close."""
    try:
        _write(path, profile)
    except OSError as exc:
        _log.warning("cannot write profile %s: %s", path, exc)


def _write(path: Path, profile: cProfile.Profile) -> None:
    """Dump ``profile`` without disabling it (it may be running on another thread)."""
    collecting = gc.isenabled()
    gc.disable()  # no finalizer may run other Python code while the statistics are read
    try:
        profile.snapshot_stats()
    finally:
        if collecting:
            gc.enable()
    # one partial file per writing thread: stop() and the periodic writer may dump at once
    partial = path.with_suffix(f".{threading.get_ident()}.tmp")
    with open(partial, "wb") as out:
        marshal.dump(profile.stats, out)
    os.replace(partial, path)
