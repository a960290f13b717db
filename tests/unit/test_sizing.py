"""The TaskManager sizing recipe (deploy/sizing.py): it grows with what the job holds, and its
process size is what Flink's own memory calculator derives from the same components."""

from __future__ import annotations

import dataclasses
import doctest
from typing import Any

import pytest

import deploy.sizing
from deploy.sizing import (
    REFERENCE,
    Workload,
    flink_derived_memory,
    load_figures,
    taskmanager_memory,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def figures() -> dict[str, float]:
    return load_figures()


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(deploy.sizing).failed == 0


def test_memory_grows_with_users_items_slots_and_profile(figures: dict[str, float]) -> None:
    base = taskmanager_memory(REFERENCE, figures)

    def grown(**change: Any) -> deploy.sizing.TaskManagerMemory:
        return taskmanager_memory(dataclasses.replace(REFERENCE, **change), figures)

    more_users = grown(users=REFERENCE.users * 4)
    assert more_users.task_heap > base.task_heap and more_users.process > base.process
    more_items = grown(items=REFERENCE.items * 4)
    assert more_items.task_heap > base.task_heap
    assert more_items.task_off_heap > base.task_off_heap
    assert grown(profile="heavy").task_heap > base.task_heap
    assert grown(slots=REFERENCE.slots * 2).task_off_heap > base.task_off_heap
    spread = grown(parallelism=REFERENCE.parallelism * 4)  # same slots, fewer users each
    assert spread.task_heap < base.task_heap
    assert grown(neighbour_lists=False).task_heap < base.task_heap
    assert base.managed == deploy.sizing.MANAGED_BYTES


def test_every_part_is_counted_once(figures: dict[str, float]) -> None:
    memory = taskmanager_memory(REFERENCE, figures)
    heap = sum(v for k, v in memory.parts.items() if k.startswith("heap:"))
    python = sum(v for k, v in memory.parts.items() if k.startswith("python:"))
    assert heap + python == pytest.approx(sum(memory.parts.values()))
    assert memory.task_heap >= heap * deploy.sizing.HEAP_HEADROOM
    assert memory.task_off_heap >= python * deploy.sizing.PYTHON_HEADROOM


@pytest.mark.parametrize(
    "workload",
    [
        REFERENCE,
        Workload(users=4_000_000, items=1_000_000, parallelism=8, slots=4, profile="heavy"),
    ],
)
def test_flink_derives_the_same_taskmanager(workload: Workload, figures: dict[str, float]) -> None:
    memory = taskmanager_memory(workload, figures)
    derived = flink_derived_memory(memory.flink_properties())
    assert derived["taskmanager.memory.task.heap.size"] == memory.task_heap
    assert derived["taskmanager.memory.task.off-heap.size"] == memory.task_off_heap
    assert derived["taskmanager.memory.managed.size"] == memory.managed
    # the process size leaves Flink its default JVM overhead (10 %, 192 MiB..1 GiB): not squeezed
    overhead = derived["taskmanager.memory.jvm-overhead.min"]
    wanted = min(max(0.1 * memory.process, 192 * MiB), 1024 * MiB)
    assert overhead == pytest.approx(wanted, abs=2 * MiB)


def test_flink_refuses_a_process_too_small_for_its_parts() -> None:
    with pytest.raises(ValueError, match="Flink refuses"):
        flink_derived_memory(
            {
                "taskmanager.memory.process.size": "1024m",
                "taskmanager.memory.task.heap.size": "2048m",
            }
        )
