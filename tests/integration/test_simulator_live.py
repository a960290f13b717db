"""The shopper simulator against the real API, broker, Flink job and Redis: its events are
accepted, the job learns from them, and shoppers' lists turn from trending to personal."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from connectors.api_client import HttpApiClient
from connectors.redis_lists import ListReader
from connectors.shoppers import SimConfig
from connectors.simulator import Simulator, Visit
from tests.conftest import RunningJob
from tests.integration.test_api import serve

pytestmark = pytest.mark.integration


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_simulated_shoppers_close_the_loop(running_job: RunningJob) -> None:
    prefix = f"sim-{uuid.uuid4().hex[:6]}-"
    config = SimConfig(shoppers=20, items=200, categories=10, user_prefix=prefix, seed=11)
    first_arm: dict[str, str] = {}
    turned: set[str] = set()
    done = threading.Event()

    def watch(visit: Visit) -> None:
        first_arm.setdefault(visit.user_id, visit.arm)
        if first_arm[visit.user_id] == "trending" and visit.arm == "online_mf":
            turned.add(visit.user_id)
        if len(turned) >= 3:
            done.set()

    reader = ListReader(running_job.settings, running_job.redis)
    with serve(running_job.settings) as http, HttpApiClient(str(http.base_url)) as client:
        # the shared job may still be starting: wait until it serves a trending list
        warm_up = {"event_id": uuid.uuid4().hex, "user_id": f"{prefix}warm-up", "ts": _now_ms()}
        client.send([{**warm_up, "item_id": "i1", "action": "purchase"}])
        running_job.wait_for(lambda: bool(reader.trending()), timeout_s=180)
        sim = Simulator(client, config)
        report = sim.run(duration_s=240, rate=lambda: 10.0, halt=done, on_visit=watch)
    assert report.errors == 0, sim.last_error
    assert report.events_sent > report.visits  # organic events and reactions were accepted
    assert len(turned) >= 3, f"first arms {first_arm}, report {report}"
    shopper = sorted(turned)[0]
    features = reader.features(shopper)
    assert features is not None and features["n_events"] > 0
    assert features["totals"].get("impression", 0) > 0  # logged by the API, counted by the job
    personal = reader.get(shopper)
    assert personal is not None and personal.strategy == "online_mf"
    assert sum(c.lists for c in report.totals.values()) == report.visits
