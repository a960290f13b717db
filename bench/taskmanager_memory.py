"""TaskManager memory: what items and users cost inside the running job (``tm_memory.*`` keys).

``python -m bench.run_all --only tm_memory [--quick]``. The memory benchmark
(:mod:`bench.memory`) gives the bytes of a user's state value and of an item's table entries;
this one measures the same job in a real Flink mini-cluster (thread mode, the default of
``flywheel job``), where those bytes sit in the JVM heap (the heap state backend) and in the
embedded Python interpreter, next to everything else a process holds. Phases:

1. the job (parallelism 1, default settings, checkpoints every 10 s) on a fresh broker and
   Redis (the harness of :mod:`bench.pipeline`); a sample once its operators are open;
2. items: one ``view`` of each of ``n_items`` new items, by ``ITEM_USERS`` users only (their
   states, at most ~17 KB each, are charged to the items: under 1 % of the figure), until the
   item table holds them all; a sample;
3. users: ``n_users`` new users with ``events_per_user`` events each (funnel of actions over
   random catalogue items); a sample once every event is accepted and the lists are written.

A sample is the live JVM heap after a full garbage collection (``jcmd <pid>
GC.class_histogram``: every live object; also the number of entries of the heap state
backend's maps) and the resident memory of the process running the Python operators
(``process_resident_memory_bytes`` of the job's metrics: in thread mode, that JVM). Phase
deltas of the live heap divided by items or users give ``heap_bytes_per_item`` and
``heap_bytes_per_user``; ``heap_overhead_bytes_per_user`` is the heap per user minus the mean
length of the users' state values (the same events replayed through
:func:`bench.user_data.replay`): what the heap backend adds per user (key, map entry, TTL
wrapper, array headers). The resident memory is reported as it is (``rss_*_bytes``), not per
item or user: the JVM grows its heap with short-lived garbage and never gives it back, so its
deltas measure the collector's policy more than the data.

Python side, without Flink: the resident memory of a fresh interpreter after importing the
job's modules (``python_import_rss_bytes``, the fixed cost of the embedded interpreter before
the initialiser's table), and the Python bytes of one decoded user state (``tracemalloc``)
for the phase-3 users, for the users of :mod:`bench.memory`'s passes (synthetic shop, Complete
Journey, and Complete Journey in the groceries configuration: the same profiles as its
``memory.<stream>.flink_state_bytes_mean``) and for
a user at every cap: the job keeps up to ``DECODED_STATES_PER_SUBTASK`` of them per subtask
(:mod:`flink_jobs.state_cache`).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Results, say
from bench.memory import _streams, state_at_caps
from bench.pipeline import _key_maker, _produce_and_track, _record
from bench.pipeline_job import PipelineJob, running_job
from bench.user_data import replay
from flink_jobs.user_state import decode_state, encode_state
from flywheel.settings import Settings, load_settings

__all__ = ["DECODED_STATES_PER_SUBTASK", "MemoryConfig", "run"]

DECODED_STATES_PER_SUBTASK: int = Settings.model_fields["state_cache_users"].default
ITEM_USERS = 50
_ACTIONS = ("view", "click", "add_to_cart", "purchase")
_FUNNEL = (0.6, 0.25, 0.1, 0.05)
_CATEGORIES = 50
_ENTRY_CLASS = "org.apache.flink.runtime.state.heap.CopyOnWriteStateMap$StateMapEntry"
_IMPORTS = (
    "flink_jobs.job",
    "flink_jobs.user_processor",
    "flink_jobs.item_neighbours",
    "flink_jobs.parse",
    "monitoring.metrics",
)


@dataclass(frozen=True)
class MemoryConfig:
    """Sizes of one run."""

    n_items: int = 50_000
    n_users: int = 100_000
    events_per_user: int = 3
    seed: int = 5

    @classmethod
    def for_run(cls, quick: bool) -> MemoryConfig:
        """The default run, or a smaller one for ``--quick`` (enough users that the heap's
        other live objects, a few MB that come and go, stay a small share of the delta)."""
        return cls(n_items=20_000, n_users=40_000) if quick else cls()


@dataclass(frozen=True)
class _Sample:
    heap_bytes: int
    state_entries: int
    rss_bytes: float


def _java_pid(root: int) -> int:
    """The JVM (``java``) among the descendants of process ``root``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                return pid
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    raise RuntimeError(f"no java process under pid {root}")


def _live_heap(pid: int) -> tuple[int, int]:
    """Bytes of all live objects after a full GC, and the heap state backend's entries."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        raise RuntimeError("jcmd not found: run scripts/install.sh (openjdk-17-jdk-headless)")
    out = subprocess.run(
        [jcmd, str(pid), "GC.class_histogram"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    total = re.search(r"^Total\s+\d+\s+(\d+)", out, flags=re.MULTILINE)
    if total is None:
        raise RuntimeError(f"unexpected jcmd output: {out[-500:]}")
    entries = re.search(rf"^\s*\d+:\s+(\d+)\s+\d+\s+{re.escape(_ENTRY_CLASS)}\b", out, re.M)
    return int(total.group(1)), int(entries.group(1)) if entries else 0


def _sample(job: PipelineJob, pid: int, what: str) -> _Sample:
    job.settle(quiet_s=2.0, timeout_s=120.0)
    heap, entries = _live_heap(pid)
    rss = job.scrape().total("process_resident_memory_bytes")
    mib = (heap / 2**20, rss / 2**20)
    say(f"{what}: live heap {mib[0]:,.1f} MiB, {entries:,} state entries, RSS {mib[1]:,.0f} MiB")
    return _Sample(heap, entries, rss)


def _item_events(cfg: MemoryConfig) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [
        {"event_id": f"item-{k}", "ts": now, "user_id": f"w{k % ITEM_USERS}", "item_id": f"i{k}",
         "action": "view", "category": f"c{k % _CATEGORIES}"}
        for k in range(cfg.n_items)
    ]  # fmt: skip


def _user_events(cfg: MemoryConfig) -> list[dict[str, Any]]:
    rng, now = random.Random(cfg.seed), int(time.time() * 1000)
    events = []
    for j in range(cfg.events_per_user):
        actions = rng.choices(_ACTIONS, weights=_FUNNEL, k=cfg.n_users)
        for u, action in enumerate(actions):
            item = rng.randrange(cfg.n_items)
            events.append(
                {"event_id": f"user-{u}-{j}", "ts": now + j, "user_id": f"m{u}",
                 "item_id": f"i{item}", "action": action, "category": f"c{item % _CATEGORIES}"}
            )  # fmt: skip
    return events


def _produce(job: PipelineJob, events: list[dict[str, Any]], what: str) -> None:
    keys = _key_maker(job.settings.hmac_key)
    records = [_record(dict(e), keys, e["event_id"], e["ts"]) for e in events]
    samples, _, _ = _produce_and_track(job, records, what, 3600.0)
    if samples[-1][1] < len(records):
        raise RuntimeError(f"{what}: {samples[-1][1]:,.0f} of {len(records):,} accepted")


def _wait_items(job: PipelineJob, n_items: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while job.scrape().total("flywheel_job_items") < n_items:  # after the item-sync round trip
        if time.monotonic() > deadline:
            raise RuntimeError(f"the item table did not reach {n_items:,} items")
        time.sleep(0.5)


def python_import_rss() -> int:
    """Resident bytes of a fresh interpreter once it has imported the job's modules."""
    code = (
        f"import {', '.join(_IMPORTS)}, re; "
        "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) * 1024


def decoded_bytes(raw_states: list[bytes], settings: Settings) -> float:
    """Mean Python bytes held by one decoded state (``tracemalloc``, all decoded and kept)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [decode_state(raw, settings) for raw in raw_states]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / max(1, len(kept))


def _encoded(events: Any, settings: Settings) -> list[bytes]:
    return [encode_state(state) for state in replay(events, settings).states.values()]


def _python_figures(settings: Settings, events: list[dict[str, Any]]) -> Results:
    raw = _encoded(events, settings)
    caps = encode_state(state_at_caps(settings, id_chars=32, item_chars=12, category_chars=12))
    results: Results = {
        "tm_memory.python_import_rss_bytes": python_import_rss(),
        "tm_memory.state_bytes_per_user": round(float(np.mean([len(r) for r in raw])), 1),
        "tm_memory.decoded_state_bytes_per_user": round(decoded_bytes(raw, settings), 1),
        "tm_memory.decoded_state_bytes_at_caps": round(decoded_bytes([caps], settings), 1),
        "tm_memory.decoded_states_per_subtask": DECODED_STATES_PER_SUBTASK,
    }
    groceries = settings.model_copy(update={"exclude_purchased": False})
    for name, stream, pass_settings in _streams(settings, groceries):
        say(f"tm_memory: decoded states of the {name} users")
        raw = _encoded(stream, pass_settings)
        results[f"tm_memory.{name}.state_bytes_per_user"] = round(
            float(np.mean([len(r) for r in raw])), 1
        )
        results[f"tm_memory.{name}.decoded_state_bytes_per_user"] = round(
            decoded_bytes(raw, pass_settings), 1
        )
    return results


def run(quick: bool = False, into: Results | None = None, work: Path | None = None) -> Results:
    """Measure; ``tm_memory.*`` keys are added to ``into`` as soon as they are known."""
    cfg = MemoryConfig.for_run(quick)
    results: Results = {} if into is None else into
    work = work or Path("var/bench") / f"tm-memory-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = load_settings()
    item_events, user_events = _item_events(cfg), _user_events(cfg)
    results.update({
        "tm_memory.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tm_memory.items": cfg.n_items,
        "tm_memory.users": cfg.n_users,
        "tm_memory.events_per_user": cfg.events_per_user,
        "tm_memory.execution_mode": settings.execution_mode,
        "tm_memory.n_factors": settings.n_factors,
    })  # fmt: skip
    say("tm_memory: Python side (fresh interpreter, decoded states)")
    results.update(_python_figures(settings, user_events))
    with running_job(work, {}) as job:
        pid = _java_pid(job.groups().get("job", 0))
        idle = _sample(job, pid, "idle job")
        results["tm_memory.heap_idle_bytes"] = idle.heap_bytes
        results["tm_memory.rss_idle_bytes"] = int(idle.rss_bytes)
        _produce(job, item_events, "items")
        _wait_items(job, cfg.n_items)
        items = _sample(job, pid, f"{cfg.n_items:,} items")
        _produce(job, user_events, "users")
        users = _sample(job, pid, f"{cfg.n_users:,} users")
    per_item_heap = (items.heap_bytes - idle.heap_bytes) / cfg.n_items
    per_user_heap = (users.heap_bytes - items.heap_bytes) / cfg.n_users
    results.update({
        "tm_memory.heap_bytes_per_item": round(per_item_heap, 1),
        "tm_memory.heap_bytes_per_user": round(per_user_heap, 1),
        "tm_memory.rss_after_items_bytes": int(items.rss_bytes),
        "tm_memory.rss_after_users_bytes": int(users.rss_bytes),
        "tm_memory.heap_overhead_bytes_per_user": round(
            per_user_heap - float(results["tm_memory.state_bytes_per_user"]), 1
        ),
        "tm_memory.state_entries_per_item": round(
            (items.state_entries - idle.state_entries) / cfg.n_items, 2
        ),
        "tm_memory.state_entries_per_user": round(
            (users.state_entries - items.state_entries) / cfg.n_users, 2
        ),
    })  # fmt: skip
    return results
