"""The job's graph as Flink plans it (a PyFlink gateway, no services): each keyed operator is
fed, hash-partitioned, straight by the operator that emits its keys, with no Python
key-selector operator in between."""

from __future__ import annotations

import json

import pytest

from flink_jobs.job import build, configure, prepare_environment
from flywheel.settings import load_settings

pytestmark = pytest.mark.integration


def test_keyed_operators_are_fed_by_the_operators_that_emit_their_keys() -> None:
    from pyflink.datastream import StreamExecutionEnvironment

    settings = load_settings(kafka_bootstrap="127.0.0.1:9", checkpoint_interval_ms=0)
    prepare_environment()
    env = StreamExecutionEnvironment.get_execution_environment(configure(settings))
    build(env, settings)
    nodes = json.loads(env.get_execution_plan())["nodes"]
    names = {node["id"]: node["contents"] for node in nodes}
    inputs = {
        node["contents"]: [
            (names[p["id"]], p["ship_strategy"]) for p in node.get("predecessors", [])
        ]
        for node in nodes
    }
    assert ("parse", "HASH") in inputs["users"]
    assert inputs["item-neighbours"] == [("users", "HASH")]
    assert inputs["parse"] == [("Source: events", "FORWARD")]
    assert not [name for name in names.values() if "key_by" in name]
