"""Experiments on the real broker, Redis and job: the API assigns arms (A/B by bucket, bandit
from the counts in Redis) and logs them on impressions; the running job credits clicks, cart
adds and purchases to the arms' impressions and counts them in Redis and in its /metrics; the
report reads them back."""

from __future__ import annotations

import io
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from connectors.arm_counts import arms_key, read_counts
from connectors.redis_lists import ListWriter, RecList, encode_rec_list, rec_suffix
from flywheel.ab_report import run as ab_report
from flywheel.events import pseudonymise
from flywheel.settings import Settings
from online_models.experiments import ArmCounts, Experiment, ThompsonBandit, assign
from tests.conftest import LIVE_EXPERIMENT, RunningJob, api_settings
from tests.integration.test_api import _topic_events as topic_events
from tests.integration.test_api import serve

pytestmark = pytest.mark.integration

TRENDING = [["t1", 9.0], ["t2", 8.0], ["t3", 7.0]]
PERSONAL = [("p1", 2.5), ("p2", 2.0), ("p3", 1.5)]
AB = "api-ab:ab:online_mf=50,trending=50"
BANDIT = "api-bandit:bandit:online_mf=1,trending=1"


@pytest.fixture(scope="module")
def base(broker: str, redis_url: str) -> Iterator[Settings]:
    """Settings with unique topics and key prefix, a trending list in Redis; no experiment."""
    settings = api_settings(broker, redis_url, "exp")
    client = redis.Redis.from_url(redis_url)
    ListWriter(client, settings.redis_prefix, 0).write_batch([("trending", orjson.dumps(TRENDING))])
    yield settings
    for key in client.scan_iter(f"{settings.redis_prefix}:*"):
        client.delete(key)
    client.close()


def _spec(settings: Settings) -> Experiment:
    spec = settings.experiment_spec
    assert spec is not None
    return spec


def _users_in(settings: Settings, arm: str, n: int) -> list[str]:
    """``n`` raw user ids that the A/B experiment of ``settings`` puts in ``arm``."""
    spec, found = _spec(settings), []
    for i in range(1000):
        user = f"{arm}-shopper-{i}"
        if assign(spec, pseudonymise(user, settings.hmac_key), settings.hmac_key).arm == arm:
            found.append(user)
        if len(found) == n:
            return found
    raise AssertionError(f"no {n} users in arm {arm}")


def _with_personal_list(settings: Settings, user: str) -> None:
    pseudonym = pseudonymise(user, settings.hmac_key)
    rec = RecList(pseudonym, "home", "online_mf", 1, 2, PERSONAL)
    client = redis.Redis.from_url(settings.redis_url)
    ListWriter(client, settings.redis_prefix, 60).write_batch(
        [(rec_suffix("home", pseudonym), encode_rec_list(rec))]
    )
    client.close()


def _get(api: httpx.Client, user: str, **params: Any) -> dict[str, Any]:
    response = api.get("/v1/recommendations", params={"user_id": user, "k": 3, **params})
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- the API -----------------------------------------------------------------------------------
def test_ab_arms_are_sticky_serve_their_strategy_and_are_logged(base: Settings) -> None:
    settings = base.with_overrides(experiment=AB)
    mf_users, trending_users = (
        _users_in(settings, "online_mf", 3),
        _users_in(settings, "trending", 3),
    )
    for user in mf_users + trending_users:
        _with_personal_list(settings, user)
    with serve(settings) as api:
        for user in mf_users + trending_users:
            first, again = _get(api, user), _get(api, user)
            assert (first["experiment"], first["arm"]) == ("api-ab", again["arm"])
            assert first["propensity"] == 0.5
            expected = "online_mf" if user in mf_users else "trending"
            assert first["arm"] == first["strategy"] == expected
            served = [i["item_id"] for i in first["items"]]
            assert served == (["p1", "p2", "p3"] if expected == "online_mf" else ["t1", "t2", "t3"])
        inside = _get(api, trending_users[0])
        outside = _get(api, mf_users[0], scene="product", item_id="x")  # not in the experiment
        assert (outside["experiment"], outside["arm"], outside["propensity"]) == (None, None, None)

    ids = {inside["request_id"], outside["request_id"]}
    found = topic_events(settings, lambda e: e.get("request_id") in ids, 2)
    assert [len(e["item_ids"]) for _, e in found] == [3, 3]  # one event per list
    logged = {
        (e["request_id"], e.get("experiment"), e.get("arm"), e.get("propensity")) for _, e in found
    }
    assert logged == {
        (inside["request_id"], "api-ab", "trending", 0.5),
        (outside["request_id"], None, None, None),
    }


def test_the_bandit_follows_the_counts_in_redis(base: Settings) -> None:
    settings = base.with_overrides(experiment=BANDIT)
    client = redis.Redis.from_url(settings.redis_url)
    key = arms_key(settings.redis_prefix, "api-bandit")
    trending_wins = {"online_mf": ArmCounts(5000, 50), "trending": ArmCounts(5000, 400)}
    _write_counts(client, key, trending_wins)
    expected = ThompsonBandit.from_counts(list(trending_wins.values())).propensities()
    with serve(settings) as api:
        served = [_get(api, f"bandit-{i}") for i in range(30)]
        assert {(s["arm"], s["strategy"]) for s in served} == {("trending", "trending")}
        assert served[0]["propensity"] == pytest.approx(expected[1])
        request_id = served[0]["request_id"]
        found = topic_events(settings, lambda e: e.get("request_id") == request_id, 1)
        assert {(e["arm"], e["propensity"]) for _, e in found} == {
            ("trending", round(served[0]["propensity"], 6))
        }

        _write_counts(
            client, key, {"online_mf": ArmCounts(5000, 400), "trending": ArmCounts(5000, 50)}
        )
        deadline = time.monotonic() + 20  # the API re-reads the counts about once a second
        while _get(api, "bandit-after")["arm"] != "online_mf":
            assert time.monotonic() < deadline, "the bandit never saw the new counts"
            time.sleep(0.2)
        assert {_get(api, f"bandit-late-{i}")["arm"] for i in range(20)} == {"online_mf"}
    client.close()


def _write_counts(client: redis.Redis, key: str, counts: dict[str, ArmCounts]) -> None:
    client.delete(key)
    for arm, c in counts.items():
        client.hset(key, mapping={f"{arm}:impressions": c.impressions, f"{arm}:clicks": c.clicks})


# --- the job -----------------------------------------------------------------------------------
def _event(user: str, item: str, action: str, ts: int, **extra: object) -> dict[str, Any]:
    event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "action": action}
    return {**event, "ts": ts, **extra}


def _arm_metrics(settings: Settings) -> dict[tuple[str, ...], float]:
    """The job's per-arm counters: ``(name, arm[, action]) -> value`` for the live experiment
    (empty while the job's metrics endpoint is not up yet)."""
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("flywheel_job_arm_") and sample.name.endswith("_total"):
                labels = sample.labels
                if labels.get("experiment") == "live-ab":
                    key = (
                        sample.name,
                        labels["arm"],
                        *([labels["action"]] if "action" in labels else []),
                    )
                    values[key] = sample.value
    return values


def test_the_job_counts_impressions_and_attributed_actions_per_arm(
    running_job: RunningJob,
) -> None:
    settings = running_job.settings.with_overrides(experiment=LIVE_EXPERIMENT)
    key = arms_key(settings.redis_prefix, "live-ab")
    pre_initialised = ("flywheel_job_arm_clicks_total", "trending")
    running_job.wait_for(lambda: pre_initialised in _arm_metrics(settings))
    before_redis = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
    before_metrics = _arm_metrics(settings)

    tag, now = uuid.uuid4().hex[:6], int(time.time() * 1000)
    mf, tr, gone = f"exp-mf-{tag}", f"exp-tr-{tag}", f"exp-gone-{tag}"
    shown = {"experiment": "live-ab", "propensity": 0.5}
    click = _event(mf, "a2", "click", now + 1000)
    events = [
        # mf: 4 impressions (one 2 days old); a2 clicked (twice, and the click replayed), a3
        # carted and bought; a click on an item never shown; a purchase outside the window
        *(_event(mf, i, "impression", now, arm="online_mf", **shown) for i in ("a1", "a2", "a3")),
        _event(mf, "a4", "impression", now - 2 * 86_400_000, arm="online_mf", **shown),
        click, click, _event(mf, "a2", "click", now + 2000),
        _event(mf, "never-shown", "click", now + 2000),
        _event(mf, "a4", "purchase", now + 2000),
        _event(mf, "a3", "add_to_cart", now + 3000), _event(mf, "a3", "purchase", now + 4000),
        # tr: 2 impressions; impressions of another experiment or an unknown arm are ignored
        *(_event(tr, item, "impression", now, arm="trending", **shown) for item in ("b1", "b2")),
        _event(tr, "b3", "impression", now, experiment="other", arm="trending"),
        _event(tr, "b4", "impression", now, experiment="live-ab", arm="mystery"),
        _event(tr, "b3", "click", now + 1000), _event(tr, "b4", "click", now + 1000),
        _event(tr, "b1", "click", now + 2000),
        # gone: forgetting the user forgets what was shown to them
        _event(gone, "c1", "impression", now, arm="trending", **shown),
        _event(gone, "-", "forget", now + 500),
        _event(gone, "c1", "click", now + 1000),
        _event(gone, "c2", "impression", now + 1500, arm="trending", **shown),
        _event(gone, "c2", "click", now + 2000),
    ]  # fmt: skip
    with running_job.producer() as producer:
        for event in events:
            producer.send(event)
    expected = {
        "online_mf": ArmCounts(impressions=4, clicks=1, add_to_carts=1, purchases=1),
        "trending": ArmCounts(impressions=4, clicks=2, add_to_carts=0, purchases=0),
    }

    def delta() -> dict[str, ArmCounts]:
        after = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
        return {arm: _minus(after.get(arm), before_redis.get(arm)) for arm in expected}

    running_job.wait_for(lambda: delta() == expected)
    time.sleep(1.5)  # a wrongly counted event would show up within a few flushes
    assert delta() == expected
    assert running_job.redis.type(key) == b"hash"

    after_metrics = _arm_metrics(settings)
    counted = {k: after_metrics[k] - before_metrics.get(k, 0.0) for k in after_metrics}
    for arm, c in expected.items():
        assert counted[("flywheel_job_arm_impressions_total", arm)] == c.impressions
        assert counted[("flywheel_job_arm_clicks_total", arm)] == c.clicks
        assert counted[("flywheel_job_arm_conversions_total", arm, "add_to_cart")] == c.add_to_carts
        assert counted[("flywheel_job_arm_conversions_total", arm, "purchase")] == c.purchases

    out = io.StringIO()
    assert ab_report(settings, out=out) == 0
    report = out.getvalue()
    assert report.startswith("experiment live-ab, control arm online_mf")
    totals = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
    for arm in expected:
        row = next(line for line in report.splitlines() if line.startswith(arm))
        assert f"{totals[arm].impressions:,}" in row.split()[1]
    assert "vs control online_mf" in report


def test_a_click_that_reaches_the_job_before_its_impression_is_still_credited(
    running_job: RunningJob,
) -> None:
    """With several API workers a click can overtake its list's impression on the way to
    Kafka: the job holds it for ``attribution_grace_ms`` of event time and credits it when the
    impression arrives, if it came at most the grace after the list was served."""
    settings = running_job.settings.with_overrides(experiment=LIVE_EXPERIMENT)
    grace = settings.attribution_grace_ms
    pre_initialised = ("flywheel_job_arm_clicks_total", "trending")
    running_job.wait_for(lambda: pre_initialised in _arm_metrics(settings))
    before = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
    tag, now = uuid.uuid4().hex[:6], _now()
    early, late = f"early-{tag}", f"late-{tag}"
    listed = {"experiment": "live-ab", "arm": "trending", "propensity": 0.5}
    events = [
        # early: the click and cart add on x2 arrive first, then the list that showed x2
        _event(early, "x2", "click", now + 800), _event(early, "x2", "add_to_cart", now + 900),
        _event(early, "", "impression", now, item_ids=["x1", "x2", "x3"], **listed),
        # late: y1's click came too long after the list to have overtaken its impression
        _event(late, "y1", "click", now + grace + 1),
        _event(late, "", "impression", now, item_ids=["y1", "y2"], **listed),
    ]  # fmt: skip
    with running_job.producer() as producer:
        for event in events:
            if not event["item_id"]:
                del event["item_id"]
            producer.send(event)
    expected = ArmCounts(impressions=5, clicks=1, add_to_carts=1)

    def delta() -> ArmCounts:
        after = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
        return _minus(after.get("trending"), before.get("trending"))

    running_job.wait_for(lambda: delta() == expected)
    time.sleep(1.5)  # a wrongly credited click would show up within a few flushes
    assert delta() == expected


def _minus(after: ArmCounts | None, before: ArmCounts | None) -> ArmCounts:
    a, b = after or ArmCounts(), before or ArmCounts()
    return ArmCounts(
        a.impressions - b.impressions,
        a.clicks - b.clicks,
        a.add_to_carts - b.add_to_carts,
        a.purchases - b.purchases,
    )


def test_a_served_list_is_counted_per_arm_and_a_click_on_it_is_attributed(
    running_job: RunningJob,
) -> None:
    """End to end with the list form: the API logs each served list as one impression event;
    the job counts one impression per item for the list's arm, and credits a click on a shown
    item to that arm."""
    settings = running_job.settings.with_overrides(experiment=LIVE_EXPERIMENT)
    tag = uuid.uuid4().hex[:6]
    users = {arm: _user_in(settings, arm, tag) for arm in ("online_mf", "trending")}
    with serve(settings) as api:
        peer = [_event(f"peer-{tag}", f"list-{tag}-{i}", "purchase", _now()) for i in range(6)]
        assert api.post("/v1/events", json=peer).status_code == 202  # trending gets items
        probe = {"scene": "product", "item_id": "none", "k": 4}  # a scene outside the test
        running_job.wait_for(lambda: len(_get(api, f"probe-{tag}", **probe)["items"]) == 4)
        pre_initialised = ("flywheel_job_arm_clicks_total", "trending")
        running_job.wait_for(lambda: pre_initialised in _arm_metrics(settings))
        before_redis = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
        before_metrics = _arm_metrics(settings)
        shown = {arm: _get(api, user, k=4) for arm, user in users.items()}
        for arm, served in shown.items():
            assert (served["arm"], len(served["items"])) == (arm, 4)
            clicked = served["items"][1]["item_id"]  # a shown item, not the first
            click = _event(users[arm], clicked, "click", _now() + 500)
            assert api.post("/v1/events", json=click).status_code == 202
        expected = {arm: ArmCounts(impressions=4, clicks=1) for arm in users}

        def delta() -> dict[str, ArmCounts]:
            after = read_counts(running_job.redis, settings.redis_prefix, "live-ab")
            return {arm: _minus(after.get(arm), before_redis.get(arm)) for arm in expected}

        running_job.wait_for(lambda: delta() == expected)
        after_metrics = _arm_metrics(settings)
        counted = {k: after_metrics[k] - before_metrics.get(k, 0.0) for k in after_metrics}
        for arm in expected:
            assert counted[("flywheel_job_arm_impressions_total", arm)] == 4
            assert counted[("flywheel_job_arm_clicks_total", arm)] == 1
        user = users["trending"]  # the click refreshed the user's features: 4 impressions
        running_job.wait_for(lambda: api.get(f"/v1/users/{user}/features").status_code == 200)
        features = api.get(f"/v1/users/{user}/features").json()["features"]
        assert features["totals"] == {"impression": 4, "click": 1}


def _user_in(settings: Settings, arm: str, tag: str) -> str:
    """A raw user id, new to the session, that the A/B experiment puts in ``arm``."""
    spec = _spec(settings)
    for i in range(1000):
        user = f"list-{arm}-{tag}-{i}"
        if assign(spec, pseudonymise(user, settings.hmac_key), settings.hmac_key).arm == arm:
            return user
    raise AssertionError(f"no user in arm {arm}")


def _now() -> int:
    return int(time.time() * 1000)
