"""Memory of one Flywheel TaskManager for a workload: the sizing recipe of docs/operations.md.

``python -m deploy.sizing --users 1000000 --items 100000 --parallelism 2 --slots 2`` prints the
Flink memory settings of one TaskManager (``--check`` also asks Flink's own calculator whether
it accepts them). The recipe is for the job as deployed: thread mode (Python runs inside the
TaskManager JVM) and Flink's default heap state backend. Per slot (one subtask of each
operator), with ``u = users / parallelism`` users and all ``items`` items:

- **JVM task heap** (Flink state, on the heap): ``u * (state value + per-entry overhead)`` for
  the users, ``items * heap_bytes_per_item`` for the broadcast item table (every slot holds
  all items) and ``items / parallelism * neighbour state`` for the item-to-item counts (the
  size of a full list: an upper bound), plus the idle job's heap once; times
  :data:`HEAP_HEADROOM`.
- **Task off-heap** (the embedded Python interpreter, native memory Flink does not track):
  the interpreter with the job's modules and the initialiser's table once, and per slot the
  item-table replica and trending counts of every item, the decoded states of up to
  ``decoded_states_per_subtask`` users and the last list of up to ``FLYWHEEL_QUALITY_USERS_MAX``
  users; times :data:`PYTHON_HEADROOM`.
- **Managed memory**: :data:`MANAGED_BYTES` only. Neither the heap backend nor thread mode
  allocates it (process mode's Python workers and RocksDB would: size those yourself).
- Framework heap and off-heap, metaspace, network and JVM overhead: Flink's defaults, added up
  the way Flink derives them (:func:`process_size`).

State is bounded in time, not in count: ``users`` are the users active within
``FLYWHEEL_STATE_TTL_S``; ``items`` should equal ``FLYWHEEL_MAX_ITEMS`` (a full item table
refuses new items rather than outgrowing the memory). The per-user figures come in two
profiles of :mod:`bench.memory`'s streams, measured in one run of
:mod:`bench.taskmanager_memory`: ``light`` (the synthetic shop: ~20 events a user) and
``heavy`` (Complete Journey households: a year of groceries, most at the state's caps).

Figures are read from ``bench/results/latest.json`` (:data:`FIGURE_KEYS`), written by
``python -m bench.run_all --only memory --only tm_memory`` and the ``neighbours`` and
``live_quality`` benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from online_models.initializers import TABLE_SIZE

__all__ = [
    "FIGURE_KEYS",
    "HEAP_HEADROOM",
    "MANAGED_BYTES",
    "PROFILES",
    "PYTHON_HEADROOM",
    "REFERENCE",
    "TaskManagerMemory",
    "Workload",
    "flink_derived_memory",
    "load_figures",
    "main",
    "mebibytes",
    "process_size",
    "taskmanager_memory",
]

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "latest.json"
MiB = 1 << 20
PROFILES = {"light": "synthetic", "heavy": "completejourney"}
"""Profile name -> the stream of :mod:`bench.memory` whose users it stands for."""
HEAP_HEADROOM = 1.5
"""Live state to task heap: garbage between collections, and the copies the heap backend
makes of entries changed while an asynchronous checkpoint is written."""
PYTHON_HEADROOM = 1.25
"""Python objects to native memory: allocator fragmentation and arenas not given back."""
MANAGED_BYTES = 128 * MiB
_FRAMEWORK_HEAP = _FRAMEWORK_OFF_HEAP = 128 * MiB  # Flink's defaults
_METASPACE = 256 * MiB
_NETWORK = (0.1, 64 * MiB, 1 << 62)  # fraction of total Flink memory, min, max (none in Flink 2)
_OVERHEAD = (0.1, 192 * MiB, 1024 * MiB)  # fraction of total process memory, min, max
FIGURE_KEYS = (
    "tm_memory.heap_overhead_bytes_per_user",
    "tm_memory.heap_bytes_per_item",
    "tm_memory.heap_idle_bytes",
    "tm_memory.python_import_rss_bytes",
    "tm_memory.decoded_states_per_subtask",
    "memory.item_replica_bytes_per_item",
    "memory.item_trending_bytes",
    "neighbours.item_state_bytes",
    "live_quality.bytes_per_user",
    *(f"tm_memory.{s}.state_bytes_per_user" for s in PROFILES.values()),
    *(f"tm_memory.{s}.decoded_state_bytes_per_user" for s in PROFILES.values()),
)


@dataclass(frozen=True)
class Workload:
    """What one job must hold: users active within the state TTL, items, and its layout."""

    users: int
    items: int
    parallelism: int
    slots: int
    profile: str = "light"
    neighbour_lists: bool = True
    quality_users_max: int = 100_000

    @property
    def users_per_slot(self) -> int:
        return math.ceil(self.users / self.parallelism)


REFERENCE = Workload(users=500_000, items=100_000, parallelism=2, slots=2)
"""The workload ``deploy/compose`` and ``deploy/k8s`` are sized for (one TaskManager with two
slots); tests/unit/test_deploy_files.py checks their settings against :func:`taskmanager_memory`."""


@dataclass(frozen=True)
class TaskManagerMemory:
    """The memory of one TaskManager, in bytes, with the parts it was added up from."""

    task_heap: int
    task_off_heap: int
    managed: int
    process: int
    parts: dict[str, float] = field(default_factory=dict)

    def flink_properties(self) -> dict[str, str]:
        """Flink configuration keys (``config.yaml``, ``FLINK_PROPERTIES``, FlinkDeployment)."""
        return {
            "taskmanager.memory.process.size": f"{mebibytes(self.process)}m",
            "taskmanager.memory.task.heap.size": f"{mebibytes(self.task_heap)}m",
            "taskmanager.memory.task.off-heap.size": f"{mebibytes(self.task_off_heap)}m",
            "taskmanager.memory.managed.size": f"{mebibytes(self.managed)}m",
        }


def mebibytes(n_bytes: float) -> int:
    """Whole MiB, rounded up.

    >>> mebibytes(1), mebibytes(MiB), mebibytes(MiB + 1)
    (1, 1, 2)
    """
    return math.ceil(n_bytes / MiB)


def _clamped(value: float, bounds: tuple[float, int, int]) -> float:
    """``value`` within ``bounds[1]..bounds[2]``."""
    return min(max(value, bounds[1]), bounds[2])


def process_size(task_heap: int, task_off_heap: int, managed: int) -> int:
    """Total process memory Flink needs for these components, its other parts at defaults:
    network is 10 % of the Flink memory (at least 64 MiB), JVM overhead 10 % of the process
    (192 MiB..1 GiB), plus framework heap and off-heap and metaspace.

    >>> process_size(1024 * MiB, 0, 0) // MiB   # 1280 / 0.9 + 256 + 192 (overhead's minimum)
    1871
    """
    fixed = _FRAMEWORK_HEAP + _FRAMEWORK_OFF_HEAP + task_heap + task_off_heap + managed
    flink = fixed / (1 - _NETWORK[0])
    flink = fixed + _clamped(flink * _NETWORK[0], _NETWORK)
    process = (flink + _METASPACE) / (1 - _OVERHEAD[0])
    process = flink + _METASPACE + _clamped(process * _OVERHEAD[0], _OVERHEAD)
    rounded = mebibytes(process) * MiB  # whole MiB: the rest goes to the JVM overhead, ...
    if rounded - flink - _METASPACE > _OVERHEAD[2]:  # ... which must stay within its range
        rounded -= MiB
    return rounded


def load_figures(path: Path = RESULTS) -> dict[str, float]:
    """The benchmark figures the recipe needs; raises naming the keys that are missing."""
    results = json.loads(path.read_text())
    missing = [key for key in FIGURE_KEYS if not isinstance(results.get(key), int | float)]
    if missing:
        raise KeyError(f"{path} lacks {missing}: run the benchmarks named in deploy/sizing.py")
    return {key: float(results[key]) for key in FIGURE_KEYS}


def taskmanager_memory(workload: Workload, figures: Mapping[str, float]) -> TaskManagerMemory:
    """The memory of one TaskManager of ``workload`` (see the module docstring)."""
    f, w = figures, workload
    stream = PROFILES[w.profile]
    users = w.users_per_slot
    state_per_user = f[f"tm_memory.{stream}.state_bytes_per_user"]
    parts: dict[str, float] = {
        "heap: users' state": w.slots
        * users
        * (state_per_user + f["tm_memory.heap_overhead_bytes_per_user"]),
        "heap: item table (broadcast)": w.slots * w.items * f["tm_memory.heap_bytes_per_item"],
        "heap: item neighbour counts (full lists)": (
            w.slots * math.ceil(w.items / w.parallelism) * f["neighbours.item_state_bytes"]
            if w.neighbour_lists
            else 0.0
        ),
        "heap: idle job": f["tm_memory.heap_idle_bytes"],
        "python: interpreter and modules": f["tm_memory.python_import_rss_bytes"] + 4 * TABLE_SIZE,
        "python: item replicas and trending": w.slots
        * w.items
        * (f["memory.item_replica_bytes_per_item"] + f["memory.item_trending_bytes"]),
        "python: decoded-state cache": w.slots
        * min(users, f["tm_memory.decoded_states_per_subtask"])
        * f[f"tm_memory.{stream}.decoded_state_bytes_per_user"],
        "python: live-quality lists": w.slots
        * min(users, w.quality_users_max)
        * f["live_quality.bytes_per_user"],
    }
    heap = sum(v for k, v in parts.items() if k.startswith("heap:"))
    python = sum(v for k, v in parts.items() if k.startswith("python:"))
    task_heap = mebibytes(heap * HEAP_HEADROOM) * MiB
    task_off_heap = mebibytes(python * PYTHON_HEADROOM) * MiB
    process = process_size(task_heap, task_off_heap, MANAGED_BYTES)
    return TaskManagerMemory(task_heap, task_off_heap, MANAGED_BYTES, process, parts)


def _flink_lib() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent / "lib"


def flink_derived_memory(properties: Mapping[str, str]) -> dict[str, int]:
    """Ask Flink (``BashJavaUtils``, as ``taskmanager.sh`` does) to derive a TaskManager's
    memory from ``properties``: returns the ``taskmanager.memory.*`` sizes in bytes; raises
    ``ValueError`` with Flink's message when it refuses the configuration."""
    with tempfile.TemporaryDirectory() as conf:
        lines = [f"{key}: {value}" for key, value in properties.items()]
        (Path(conf) / "config.yaml").write_text("\n".join(lines) + "\n")
        cmd = ["java", "-cp", f"{_flink_lib()}{os.sep}*"]
        cmd += ["org.apache.flink.runtime.util.bash.BashJavaUtils", "GET_TM_RESOURCE_PARAMS"]
        done = subprocess.run(
            [*cmd, "--configDir", conf], capture_output=True, text=True, timeout=120
        )
    found = re.findall(r"-D (taskmanager\.memory\.[\w.-]+)=(\d+)b", done.stdout)
    if done.returncode != 0 or not found:
        raise ValueError(f"Flink refuses the memory configuration:\n{done.stdout}{done.stderr}")
    return {key: int(value) for key, value in found}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the TaskManager memory of a workload (``--check``: also Flink's derivation)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.sizing", description=__doc__)
    parser.add_argument("--users", type=int, default=REFERENCE.users, help="active users")
    parser.add_argument("--items", type=int, default=REFERENCE.items, help="FLYWHEEL_MAX_ITEMS")
    parser.add_argument("--parallelism", type=int, default=REFERENCE.parallelism)
    parser.add_argument("--slots", type=int, default=REFERENCE.slots, help="per TaskManager")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=REFERENCE.profile)
    parser.add_argument("--no-neighbour-lists", action="store_true", help="NEIGHBOUR_CONTEXT=0")
    parser.add_argument("--check", action="store_true", help="let Flink derive the result")
    parser.add_argument("--results", type=Path, default=RESULTS, help="benchmark results")
    args = parser.parse_args(argv)
    workload = Workload(
        args.users, args.items, args.parallelism, args.slots, args.profile,
        neighbour_lists=not args.no_neighbour_lists,
    )  # fmt: skip
    memory = taskmanager_memory(workload, load_figures(args.results))
    print(f"# {workload}")
    for part, size in memory.parts.items():
        print(f"#   {part:<45} {size / MiB:>10,.0f} MiB")
    for key, value in memory.flink_properties().items():
        print(f"{key}: {value}")
    if args.check:
        derived = flink_derived_memory(memory.flink_properties())
        print(f"# Flink derives: {derived}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
