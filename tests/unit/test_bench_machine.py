"""The machine reference recorded with every benchmark run (bench.machine)."""

from __future__ import annotations

from bench import machine
from bench.common import machine_info


def test_the_reference_workload_is_fixed_and_does_all_its_work() -> None:
    documents = machine._documents()
    assert machine._workload(documents) == machine._workload(machine._documents())
    assert machine._workload(documents[:10]) < machine._workload(documents), "every document counts"


def test_every_run_records_the_reference_with_the_machine_facts() -> None:
    facts = machine_info("python -m bench.run_all")
    assert isinstance(facts["meta.python_ref_ms"], float) and facts["meta.python_ref_ms"] > 0
    assert facts["meta.command"] == "python -m bench.run_all"
