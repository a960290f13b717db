"""The machine reference recorded with every benchmark run (bench.machine)."""

from __future__ import annotations

from bench import machine


def test_the_reference_workload_is_fixed_and_does_all_its_work() -> None:
    documents = machine._documents()
    assert machine._workload(documents) == machine._workload(machine._documents())
    assert machine._workload(documents[:10]) < machine._workload(documents), "every document counts"


def test_the_reference_keys() -> None:
    keys = machine.reference()
    assert set(keys) == {"machine.python_ref_ms", "machine.cpu_model", "machine.date"}
    assert isinstance(keys["machine.python_ref_ms"], float) and keys["machine.python_ref_ms"] > 0
    assert isinstance(keys["machine.cpu_model"], str)
