"""The shopper simulator against a small in-memory fake of our ApiClient interface."""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from connectors.api_client import ApiError, ServedList
from connectors.ctr_timeline import ArmCounts, CtrTimeline, ctr_ratio, plot_ctr
from connectors.shoppers import ShopperModel, SimConfig
from connectors.simulator import Simulator, arm_of
from flywheel.events import Rejection, check_event
from flywheel.settings import load_settings


class FakeApi:
    """A tiny recommender behind the ApiClient interface: users with fewer than 3 events get
    the globally most clicked items (``trending``); others get the most clicked items of the
    categories they interacted with (``online_mf``)."""

    def __init__(self, fail_with: ApiError | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.served: list[tuple[str, ServedList]] = []
        self.fail_with = fail_with
        self.popularity: Counter[str] = Counter({f"i{n}": 0 for n in range(10)})
        self.category_of: dict[str, str] = {}
        self.user_categories: dict[str, Counter[str]] = defaultdict(Counter)

    def recommend(self, user_id: str, scene: str = "home", k: int = 10) -> ServedList:
        if self.fail_with is not None:
            raise self.fail_with
        request_id = uuid.uuid4().hex
        tastes = self.user_categories[user_id]
        if sum(tastes.values()) < 3:
            items = [item for item, _ in self.popularity.most_common(k)]
            served = ServedList("trending", request_id, tuple(items))
        else:
            liked = {c for c, _ in tastes.most_common(2)}
            ranked = [
                i for i, _ in self.popularity.most_common() if self.category_of.get(i) in liked
            ]
            served = ServedList("online_mf", request_id, tuple(ranked[:k]))
        self.served.append((user_id, served))
        return served

    def send(self, events: Sequence[dict[str, Any]]) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        for event in events:
            self.events.append(event)
            self.popularity[event["item_id"]] += 1
            self.category_of[event["item_id"]] = event["category"]
            self.user_categories[event["user_id"]][event["category"]] += 1
        return len(events)


class StepClock:
    """A clock that advances ``step`` seconds at every reading."""

    def __init__(self, step: float = 0.01) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


CONFIG = SimConfig(
    shoppers=60, items=400, categories=10, organic_per_visit=1.0, seed=3, bucket_s=5.0
)


def test_a_bad_configuration_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"click_top=1\.5"):
        SimConfig(click_top=1.5)
    with pytest.raises(ValueError, match="categories"):
        SimConfig(items=10, categories=20)


def test_shoppers_click_what_suits_their_hidden_tastes() -> None:
    model = ShopperModel(CONFIG)
    shopper = model.shopper(0)
    catalogue = [f"i{n}" for n in range(CONFIG.items)]
    liked = [i for i in catalogue if model.match(shopper, i) >= 0.8][:10]
    disliked = [i for i in catalogue if model.match(shopper, i) == 0][:10]
    assert len(liked) == len(disliked) == 10
    rng = np.random.default_rng(0)

    def clicks(items: list[str]) -> int:
        served = ServedList("x", "r", tuple(items))
        return sum(model.react(shopper, served, rng, 1).clicks for _ in range(300))

    assert clicks(liked) > 5 * clicks(disliked)
    assert (
        model.react(shopper, ServedList("x", "r", tuple(liked[:4] + disliked)), rng, 1).relevant
        == 4
    )
    assert model.match(shopper, "not-in-the-catalogue") == 0.0
    assert model.match(shopper, f"i{CONFIG.items}") == 0.0


def test_shoppers_examine_the_top_of_the_list_first() -> None:
    model = ShopperModel(SimConfig(items=400, categories=10, position_decay=1e-9, click_top=1.0))
    shopper = model.shopper(0)
    served = ServedList("x", "r", tuple(f"i{n}" for n in range(10)))
    rng = np.random.default_rng(1)
    positions = {
        e["position"]
        for _ in range(200)
        for e in model.react(shopper, served, rng, 1).events
        if e["action"] == "click"
    }
    assert positions == {1}


def test_every_event_passes_the_jobs_validation_and_is_attributed() -> None:
    api = FakeApi()
    Simulator(api, CONFIG, clock=StepClock()).run(max_visits=300)
    settings = load_settings()
    now = max(e["ts"] for e in api.events)
    assert all(
        not isinstance(check_event(orjson.dumps(e), settings, now), Rejection) for e in api.events
    )
    assert len({e["event_id"] for e in api.events}) == len(api.events)
    actions = Counter(e["action"] for e in api.events)
    assert actions["click"] and actions["add_to_cart"] and actions["purchase"] and actions["view"]
    served = {s.request_id: s for _, s in api.served}
    for event in (e for e in api.events if e["scene"] == "home"):
        shown = served[event["request_id"]].items
        assert shown[event["position"] - 1] == event["item_id"]
        assert event["category"] == ShopperModel(CONFIG).attributes(event["item_id"])["category"]


def test_the_loop_feeds_the_recommender_and_counts_ctr_per_arm() -> None:
    api = FakeApi()
    sim = Simulator(api, CONFIG, clock=StepClock())
    report = sim.run(max_visits=1500)
    assert report.visits == 1500 and report.errors == 0
    assert report.events_sent == len(api.events) > 0
    assert report.shoppers == CONFIG.shoppers  # all arrived
    totals = report.totals
    assert set(totals) == {"online_mf", "trending"}
    assert sum(c.lists for c in totals.values()) == 1500
    assert totals["trending"].impressions == sum(
        len(s.items) for _, s in api.served if s.strategy == "trending"
    )
    # shoppers start cold (trending) and become warm (personal lists) through their events
    first: dict[str, str] = {}
    for user, served in api.served:
        first.setdefault(user, served.strategy)
    assert Counter(first.values()).most_common(1)[0][0] == "trending"
    turned = {
        user for user, s in api.served if s.strategy == "online_mf" and first[user] == "trending"
    }
    assert len(turned) > CONFIG.shoppers / 2
    # personal lists of the shopper's categories suit hidden tastes better than popular items
    assert totals["online_mf"].ctr > totals["trending"].ctr
    assert report.ratio == pytest.approx(
        report.second_half["online_mf"].ctr / report.second_half["trending"].ctr
    )


def test_min_requests_leaves_out_the_first_visits() -> None:
    api = FakeApi()
    config = SimConfig(shoppers=30, items=400, categories=10, min_requests=4, seed=5)
    sim = Simulator(api, config, clock=StepClock())
    visits = []
    sim.run(max_visits=400, on_visit=visits.append)
    counted = sum(c.lists for c in sim.timeline.totals().values())
    assert counted == sum(v.number >= 4 for v in visits) < len(visits)


def test_api_errors_are_counted_then_stop_the_run() -> None:
    api = FakeApi(fail_with=ApiError(503, "Redis unavailable"))
    sim = Simulator(api, CONFIG, clock=StepClock())
    visit = sim.visit()
    assert (visit.arm, visit.shown, sim.errors) == ("", 0, 1)
    with pytest.raises(ApiError, match="20 visits in a row failed; last: HTTP 503"):
        sim.run(max_visits=100)
    assert sim.errors == 20


def test_a_run_stops_after_its_duration() -> None:
    clock = StepClock(step=0.5)
    sim = Simulator(FakeApi(), CONFIG, clock=clock)
    report = sim.run(duration_s=30.0)
    assert 0 < report.visits < 60 and report.elapsed_s >= 30.0


def test_the_arm_is_the_experiments_when_there_is_one() -> None:
    assert arm_of(ServedList("trending", "r", ("i1",), arm="online_mf")) == "online_mf"
    assert arm_of(ServedList("trending", "r", ("i1",))) == "trending"


def test_timeline_ratio_and_plot(tmp_path: Path) -> None:
    timeline = CtrTimeline(bucket_s=10)
    for second in range(60):
        timeline.record(second, "trending", ArmCounts(1, 10, 1))
        timeline.record(second, "online_mf", ArmCounts(1, 10, 1 + (second >= 30)))
    half = timeline.totals(since_s=30)
    assert ctr_ratio(half, "online_mf", "trending") == pytest.approx(2.0)
    assert ctr_ratio(timeline.totals(), "online_mf", "trending") == pytest.approx(1.5)
    assert math.isnan(ctr_ratio(half, "online_mf", "bandit"))
    assert [start for start, _ in timeline.series("trending")] == [0, 10, 20, 30, 40, 50]
    assert timeline.to_dict()["arms"]["online_mf"][3] == {
        "start_s": 30, "lists": 10, "impressions": 100, "clicks": 20, "carts": 0, "purchases": 0,
        "relevant": 0,
    }  # fmt: skip
    path = tmp_path / "ctr.png"
    assert plot_ctr(timeline, path, "test", half_s=30)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
