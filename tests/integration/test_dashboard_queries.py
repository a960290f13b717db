"""The dashboard and the alert rules against a live job and API: every panel query and every
alert expression runs on a real Prometheus that scrapes the running job, Flink and a real API
process (``flywheel api``) that served requests, and every metric they name has series there;
the API and memory panels show the requests made. Also: the committed dashboard JSON is
current and well-formed."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.job_process import JobProcess
from deploy.local_stack import HOST, ServiceError, free_port, query_prometheus, start_prometheus
from monitoring.dashboard import DASHBOARD_PATH, render
from tests.conftest import RunningJob

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
# Grafana's built-in variables, replaced by values a plain Prometheus query accepts
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
_NAME = r"(?<![\w:])([A-Za-z_:][\w:]*)(?!\s*\()(?=[\s{\[)]|$)"
SCRAPE_WAIT_S = 60.0
API_START_S = 60.0


def metric_names(promql: str) -> set[str]:
    """Metric names in ``promql``: identifiers followed by ``{``, ``[``, ``)``, a space or the
    end, once strings, label matchers, ranges and grouping clauses are removed; function
    and aggregation names (followed by ``(``) and keywords are not names.

    >>> sorted(metric_names('histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 1'))
    ['x_bucket']
    >>> sorted(metric_names('up{job="a b"} == 0 or absent(up{job="flywheel"})'))
    ['up']
    >>> sorted(metric_names('(sum(increase(a_total[10m])) == 0) and on() (max(b) == 1)'))
    ['a_total', 'b']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', promql)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(_GROUPING, " ", text)
    return {name for name in re.findall(_NAME, text) if name.lower() not in _KEYWORDS}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> dict[str, str]:
    """``where -> PromQL`` of every dashboard target (variables replaced) and alert rule."""
    queries = {}
    for panel in _panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"panel {panel['title']!r} target {target['refId']}"] = expr
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return queries


def test_the_committed_dashboard_is_current() -> None:
    assert DASHBOARD_PATH.read_text() == render(), "run: python -m monitoring.dashboard"


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no target"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refIds"
        assert all(
            t["expr"].strip() and t["datasource"] == panel["datasource"] for t in panel["targets"]
        )
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_no_query_uses_an_unknown_grafana_variable() -> None:
    leftovers = {where: q for where, q in _queries().items() if "$" in q}
    assert not leftovers


@dataclass
class Scraped:
    """The session job plus a real API process, both scraped by this module's Prometheus."""

    job: RunningJob
    prometheus_port: int
    api: httpx.Client
    api_process: JobProcess

    def query(self, promql: str) -> list[dict[str, Any]]:
        return query_prometheus(self.prometheus_port, promql)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
        """Poll ``predicate``; fail naming ``what`` with the API log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        tail = self.api_process.log_path.read_text(errors="replace")[-2000:]
        raise AssertionError(f"{what}: not within {timeout_s:.0f}s; API log tail:\n{tail}")


def _api_answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code in (200, 503)
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def scraped(running_job: RunningJob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """``flywheel api`` as a child process on the session job's Redis and topics, and a
    Prometheus scraping the job (``flywheel``), Flink (``flink``) and the API (``api``, as in
    ``make run``): the session Prometheus scrapes only the first two."""
    var = tmp_path_factory.mktemp("dashboard")
    settings = running_job.settings.with_overrides(api_port=free_port(), var_dir=var)
    api = JobProcess(settings, var / "api.log", ("api",)).start()
    targets = {
        "flywheel": [f"{HOST}:{settings.metrics_port}"],
        "flink": [f"{HOST}:{settings.flink_metrics_port}"],
        "api": [f"{HOST}:{settings.api_port}"],
    }
    prometheus = start_prometheus(free_port(), var / "prometheus", targets, log_dir=var)
    client = httpx.Client(base_url=f"http://{HOST}:{settings.api_port}", timeout=30)
    try:
        deadline = time.monotonic() + API_START_S
        while not _api_answers(client):
            if not api.running or time.monotonic() > deadline:
                log = api.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"flywheel api did not answer; log tail:\n{log}")
            time.sleep(0.2)
        yield Scraped(running_job, prometheus.port, client, api)
    finally:
        client.close()
        api.stop()
        prometheus.stop()


def _send_api_requests(api: httpx.Client, user: str) -> dict[int, int]:
    """One round of requests with known answers: lists (200), a bad query (422), features
    of an unknown user (404) and one posted event (202). Returns ``status -> count``."""
    statuses: dict[int, int] = {}
    answers = [api.get("/v1/recommendations", params={"user_id": user, "k": 5}) for _ in range(3)]
    answers.append(api.get("/v1/recommendations", params={"user_id": user, "k": 0}))
    answers.append(api.get(f"/v1/users/{user}-nobody/features"))
    event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": "sku-1", "action": "click"}
    answers.append(api.post("/v1/events", json=[{**event, "ts": int(time.time() * 1000)}]))
    for answer in answers:
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    return statuses


def _panel_expr(title: str, ref: str = "A") -> str:
    (panel,) = [p for p in _panels() if p["title"] == title]
    (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return str(expr)


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def _send_traffic(job: Any) -> None:
    now = int(time.time() * 1000)
    actions = ("view", "click", "add_to_cart", "purchase")
    with job.producer() as producer:
        for u in range(3):
            user = f"dash-{uuid.uuid4().hex[:6]}"
            for i in range(6):
                producer.send(
                    {
                        "event_id": uuid.uuid4().hex,
                        "user_id": user,
                        "item_id": f"sku-{i % 4}",
                        "action": actions[(u + i) % 4],
                        "ts": now + i,
                        "category": "tea",
                    }
                )
        producer.send_raw(b'{"event_id": "1", "user_id": ')  # one dead letter
        producer.flush()


def _has_series(port: int, name: str) -> bool:
    return bool(query_prometheus(port, f'count({{__name__="{name}"}})'))


def test_every_query_runs_and_names_scraped_metrics(scraped: Scraped) -> None:
    port = scraped.prometheus_port
    _send_traffic(scraped.job)
    _send_api_requests(scraped.api, f"dash-api-{uuid.uuid4().hex[:6]}")
    accepted = 'sum(flywheel_job_events_total{outcome="accepted"}) > 0'
    scraped.job.wait_for(lambda: bool(query_prometheus(port, accepted)), timeout_s=90)

    queries = _queries()
    errors = {}
    for where, promql in queries.items():
        try:
            query_prometheus(port, promql)
        except ServiceError as exc:
            errors[where] = str(exc)
    assert not errors, f"queries rejected by Prometheus: {errors}"

    wanted = {name for promql in queries.values() for name in metric_names(promql)}
    expected = {"up", "flywheel_job_events_total", "flywheel_api_requests_total"}
    assert expected | {"process_resident_memory_bytes"} <= wanted, wanted
    missing = set(wanted)
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while missing and time.monotonic() < deadline:
        missing = {name for name in missing if not _has_series(port, name)}
        if missing:
            time.sleep(2)
    users = {n: [w for w, q in queries.items() if n in metric_names(q)] for n in missing}
    assert not missing, f"metrics with no series after {SCRAPE_WAIT_S:.0f}s: {users}"


def test_the_api_and_memory_panels_show_the_requests_made(scraped: Scraped) -> None:
    user = f"dash-api-{uuid.uuid4().hex[:6]}"
    first = _send_api_requests(scraped.api, user)
    assert first == {200: 3, 422: 1, 404: 1, 202: 1}, first
    # a counter's first sample already holds its first requests, which rate() cannot see:
    # wait until every series of this round is scraped, then count a second round
    refused = 'flywheel_api_requests_total{endpoint="/v1/users/{user_id}/features",status="404"}'
    scraped.wait_for(lambda: bool(scraped.query(refused)), "the 404 series scraped")
    assert _send_api_requests(scraped.api, user) == first

    client_errors = _panel_expr("API error ratio", "B")
    scraped.wait_for(
        lambda: any(v > 0 for v in _values(scraped.query(client_errors))), "a 4xx ratio above 0"
    )
    ((ratio_4xx,),) = [_values(scraped.query(client_errors))]
    assert 0 < ratio_4xx < 1, ratio_4xx
    assert _values(scraped.query(_panel_expr("API error ratio", "A"))) == [0.0]

    requests = scraped.query(_panel_expr("API requests/s by route and status"))
    answered = {(s["metric"]["endpoint"], s["metric"]["status"]) for s in requests}
    assert {("/v1/recommendations", "200"), ("/v1/recommendations", "422")} <= answered
    assert ("/v1/events", "202") in answered, answered

    for quantile in ("A", "B"):
        latency = scraped.query(_panel_expr("API latency by route", quantile))
        by_route = {s["metric"]["endpoint"]: float(s["value"][1]) for s in latency}
        seconds = by_route.get("/v1/recommendations", math.nan)
        assert 0 < seconds < math.inf, (quantile, by_route)
        assert "/metrics" not in by_route

    rss = _values(scraped.query(_panel_expr("Python worker memory (RSS)")))
    assert len(rss) == 1 and rss[0] > 0, rss
    # the API's processes: its workers and, with several, their supervisor
    workers = scraped.job.settings.api_workers
    cpu_and_processes = "API CPU (cores) and processes"
    (processes,) = _values(scraped.query(_panel_expr(cpu_and_processes, "B")))
    assert processes == workers + (1 if workers > 1 else 0), processes
    (api_rss,) = _values(scraped.query(_panel_expr("API memory (RSS)")))
    assert api_rss > 20e6 * processes, api_rss  # Python processes with their imports
    scraped.wait_for(
        lambda: any(v > 0 for v in _values(scraped.query(_panel_expr(cpu_and_processes)))),
        "API CPU time above 0",
    )
