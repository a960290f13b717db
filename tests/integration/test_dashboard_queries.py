"""The dashboard and the alert rules against a live job: every panel query and every alert
expression runs on the real Prometheus that scrapes the running job, and every metric they
name has series there. Also: the committed dashboard JSON is current and well-formed."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local_stack import ServiceError, query_prometheus
from monitoring.dashboard import DASHBOARD_PATH, render

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "monitoring" / "alerts.yml"
# Grafana's built-in variables, replaced by values a plain Prometheus query accepts
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
_NAME = r"(?<![\w:])([A-Za-z_:][\w:]*)(?!\s*\()(?=[\s{\[)]|$)"
SCRAPE_WAIT_S = 60.0


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


def test_every_query_runs_and_names_scraped_metrics(running_job: Any) -> None:
    port = running_job.prometheus_port
    _send_traffic(running_job)
    accepted = 'sum(flywheel_job_events_total{outcome="accepted"}) > 0'
    running_job.wait_for(lambda: bool(query_prometheus(port, accepted)), timeout_s=90)

    queries = _queries()
    errors = {}
    for where, promql in queries.items():
        try:
            query_prometheus(port, promql)
        except ServiceError as exc:
            errors[where] = str(exc)
    assert not errors, f"queries rejected by Prometheus: {errors}"

    wanted = {name for promql in queries.values() for name in metric_names(promql)}
    assert {"up", "flywheel_job_events_total"} <= wanted, wanted
    missing = set(wanted)
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while missing and time.monotonic() < deadline:
        missing = {name for name in missing if not _has_series(port, name)}
        if missing:
            time.sleep(2)
    users = {n: [w for w, q in queries.items() if n in metric_names(q)] for n in missing}
    assert not missing, f"metrics with no series after {SCRAPE_WAIT_S:.0f}s: {users}"
