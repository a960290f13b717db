"""The API's side of an experiment: which arm serves a request, what the arm serves, and what
the impressions carry."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from connectors.redis_lists import RecList
from flywheel.events import Event, Rejection, check_event, pseudonymise
from flywheel.settings import load_settings
from online_models.experiments import (
    ArmCounts,
    Assignment,
    ThompsonBandit,
    assign,
    parse_experiment,
)
from serving.assignment import ArmChooser
from serving.ingest import impression_record
from serving.recommend import RecRequest, Snapshot, recommend

KEY = "unit-test-key"
AB = parse_experiment("home-ab:ab:online_mf=1,trending=1:home,cart")
BANDIT = parse_experiment("home-bandit:bandit:online_mf=1,trending=1")


class FakeCounts:
    """Our counts-reader interface over a dict; counts the reads."""

    def __init__(self, counts: dict[str, ArmCounts]) -> None:
        self.counts, self.reads = counts, 0

    async def __call__(self, experiment: str) -> dict[str, ArmCounts]:
        self.reads += 1
        return dict(self.counts)


def _assign_many(chooser: ArmChooser, users: list[str], scene: str = "home") -> list[Assignment]:
    async def run() -> list[Assignment]:
        found = [await chooser.assign(user, scene) for user in users]
        assert all(a is not None for a in found)
        return [a for a in found if a is not None]

    return asyncio.run(run())


def test_ab_requests_get_the_users_bucket_and_other_scenes_none() -> None:
    assert AB is not None
    reader = FakeCounts({})
    chooser = ArmChooser(AB, KEY, reader)
    users = [pseudonymise(f"u{i}", KEY) for i in range(200)]
    got = _assign_many(chooser, users)
    assert got == [assign(AB, user, KEY) for user in users]
    assert {a.arm for a in got} == {"online_mf", "trending"}
    assert asyncio.run(chooser.assign(users[0], "product")) is None
    assert reader.reads == 0, "A/B needs no counts"


def test_the_bandit_draws_from_the_counts_and_logs_their_propensities() -> None:
    assert BANDIT is not None
    counts = {"online_mf": ArmCounts(2000, 60), "trending": ArmCounts(2000, 72)}
    reader = FakeCounts(counts)
    chooser = ArmChooser(BANDIT, KEY, reader, refresh_s=3600, seed=1)
    got = _assign_many(chooser, ["same-user"] * 4000)
    expected = ThompsonBandit.from_counts(list(counts.values())).propensities()
    assert {a.arm: a.propensity for a in got} == pytest.approx(
        {"online_mf": expected[0], "trending": expected[1]}
    )
    share = Counter(a.arm for a in got)["trending"] / len(got)
    assert share == pytest.approx(expected[1], abs=0.03)
    assert reader.reads == 1, "counts are cached for refresh_s"


def test_the_bandit_rereads_the_counts_once_they_are_stale() -> None:
    assert BANDIT is not None
    reader = FakeCounts({"online_mf": ArmCounts(5000, 500), "trending": ArmCounts(5000, 50)})
    chooser = ArmChooser(BANDIT, KEY, reader, refresh_s=0.0, seed=2)
    assert {a.arm for a in _assign_many(chooser, ["u"] * 50)} == {"online_mf"}
    reader.counts = {"online_mf": ArmCounts(5000, 50), "trending": ArmCounts(5000, 500)}
    assert {a.arm for a in _assign_many(chooser, ["u"] * 50)} == {"trending"}
    assert reader.reads == 100


def test_the_trending_arm_serves_trending_to_a_user_with_a_personal_list() -> None:
    personal = RecList("p", "home", "online_mf", 1, 2, [("p1", 2.0), ("p2", 1.0)])
    snapshot = Snapshot(personal, {}, [("t1", 9.0), ("t2", 8.0)])
    forced = recommend(snapshot, RecRequest("home", 2, strategy="trending"))
    assert (forced.strategy, [s.item_id for s in forced.items]) == ("trending", ["t1", "t2"])
    usual = recommend(snapshot, RecRequest("home", 2, strategy="online_mf"))
    assert (usual.strategy, [s.item_id for s in usual.items]) == ("online_mf", ["p1", "p2"])


def test_impressions_carry_experiment_arm_and_propensity() -> None:
    arm = Assignment("home-ab", "trending", 0.5)
    _, payload = impression_record("p", "u", "home", "trending", "r1", ["a", "b"], 5, arm)
    event = orjson.loads(payload)
    assert (event["experiment"], event["arm"], event["propensity"]) == ("home-ab", "trending", 0.5)
    assert event["item_ids"] == ["a", "b"]
    _, plain = impression_record("p", "u", "home", "trending", "r1", ["a"], 5)
    assert "arm" not in orjson.loads(plain)


def test_experiment_fields_are_parsed_and_type_checked_like_the_other_optional_ones() -> None:
    settings = load_settings()
    event = {"event_id": "1", "user_id": "u", "item_id": "i", "action": "impression", "ts": 10**12}
    now = 10**12
    parsed = check_event(
        orjson.dumps({**event, "experiment": "e", "arm": "trending"}), settings, now
    )
    assert isinstance(parsed, Event) and (parsed.experiment, parsed.arm) == ("e", "trending")
    plain = check_event(orjson.dumps(event), settings, now)
    assert isinstance(plain, Event) and (plain.experiment, plain.arm) == ("", "")
    bad = check_event(orjson.dumps({**event, "arm": 3}), settings, now)
    assert bad == Rejection("wrong_type", "arm must be a string of <= 128 chars")
