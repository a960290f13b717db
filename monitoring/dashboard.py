"""The Grafana dashboard of Flywheel, as code.

``python -m monitoring.dashboard`` writes ``monitoring/grafana/flywheel-dashboard.json``;
``--check`` exits 1 when that committed file differs from what this module generates.
Panels show only metrics the job and the API export today: Flywheel's own (``flywheel_job_*``
and the job's ``process_*``, scrape job ``flywheel``), Flink's Prometheus reporter (``flink_*``,
scrape job ``flink``) and the recommendation API's (``flywheel_api_*``, any scrape job). Every
panel queries the data source chosen by the dashboard variable ``datasource`` (Grafana's
provisioning in ``monitoring/grafana/provisioning`` makes it the Prometheus of the stack).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PATH", "DASHBOARD_UID", "build_dashboard", "main", "render"]

DASHBOARD_UID = "flywheel"
DASHBOARD_PATH = Path(__file__).resolve().parent / "grafana" / "flywheel-dashboard.json"

Panel = dict[str, Any]

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_RATE = "$__rate_interval"
_WIDTH, _HEIGHT = 12, 8
_DEAD_LETTERED = 'flywheel_job_events_total{outcome="dead_letter"}'


def _target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": _DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    """One target per ``(expr, legend)``, with ref ids A, B, C, ..."""
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def _timeseries(title: str, description: str, unit: str, *queries: tuple[str, str]) -> Panel:
    """A time-series panel of ``(PromQL, legend)`` queries (placed by ``_layout``)."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "targets": _targets(*queries),
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _stat(title: str, description: str, unit: str, expr: str, legend: str = "") -> Panel:
    """A single-value panel showing the last value of one query."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "targets": _targets((expr, legend)),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def _row(title: str) -> Panel:
    """A full-width row header."""
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}[{_RATE}]))"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{_RATE}])))"


def _traffic() -> list[Panel]:
    return [
        _row("Traffic"),
        _timeseries(
            "Events/s by action and outcome",
            "Events read from Kafka by action and outcome (accepted, duplicate, dead_letter).",
            "ops",
            (_rate("flywheel_job_events_total", "action, outcome"), "{{action}} {{outcome}}"),
        ),
        _timeseries(
            "Dead letters/s by reason",
            "Rejected payloads sent to the dead-letter topic, by reason.",
            "ops",
            (_rate("flywheel_job_dead_letters_total", "reason"), "{{reason}}"),
        ),
        _timeseries(
            "Dead-letter ratio",
            "Share of events dead-lettered (alert FlywheelDeadLetterRatioHigh above 5%).",
            "percentunit",
            (f"{_rate(_DEAD_LETTERED)} / {_rate('flywheel_job_events_total')}", "dead-lettered"),
        ),
        _timeseries(
            "Late events/s",
            "Accepted events older than the user's watermark (learnt, not windowed).",
            "ops",
            (_rate("flywheel_job_late_events_total"), "late"),
        ),
        _timeseries(
            "Kafka source backlog (pendingRecords)",
            "Records not yet read by each Kafka source (Flink's pendingRecords), per source.",
            "short",
            (
                "sum by (operator_name) (flink_taskmanager_job_task_operator_pendingRecords)",
                "{{operator_name}}",
            ),
        ),
    ]


def _freshness_and_model() -> list[Panel]:
    batch = "flywheel_job_topn_batch_users"
    return [
        _row("Freshness and model"),
        _timeseries(
            "Event → Redis freshness",
            "Time from the Kafka record to its user's list written to Redis (alert above 1 s).",
            "s",
            (_quantile(0.5, "flywheel_job_freshness_seconds"), "p50"),
            (_quantile(0.99, "flywheel_job_freshness_seconds"), "p99"),
        ),
        _timeseries(
            "Model updates/s",
            "Online matrix-factorisation update steps.",
            "ops",
            (_rate("flywheel_job_model_updates_total"), "updates"),
        ),
        _timeseries(
            "Top-N batch duration",
            "Duration of one top-N refresh batch (scoring + Redis write).",
            "s",
            (_quantile(0.5, "flywheel_job_topn_batch_seconds"), "p50"),
            (_quantile(0.99, "flywheel_job_topn_batch_seconds"), "p99"),
        ),
        _timeseries(
            "Top-N batch size",
            "Users per top-N refresh batch: mean and p99.",
            "short",
            (f"{_rate(f'{batch}_sum')} / {_rate(f'{batch}_count')}", "mean"),
            (_quantile(0.99, batch), "p99"),
        ),
        _timeseries(
            "Lists written/s by strategy",
            "Lists written to Redis: online_mf (personal) or trending (cold users).",
            "ops",
            (_rate("flywheel_job_lists_written_total", "strategy"), "{{strategy}}"),
        ),
        _timeseries(
            "Item-sync batches/s",
            "Item-factor delta batches sent to and received from the item-sync topic.",
            "ops",
            (_rate("flywheel_job_item_sync_batches_total", "direction"), "{{direction}}"),
        ),
        _stat(
            "Items in the table",
            "Items in the model's item table (largest replica).",
            "short",
            "max(flywheel_job_items)",
            "items",
        ),
    ]


_QUALITY = "flywheel_job_quality"
_QUALITY_WINDOW = "30m"  # rolling window of the quality panels and of FlywheelQualityDrop
_WARM = 'split!="cold"'  # as the offline headline figure: events of users with a history


def _quality_rate(metric: str, by: str, selector: str = _WARM) -> str:
    return f"sum by ({by}) (rate({_QUALITY}_{metric}{{{selector}}}[{_QUALITY_WINDOW}]))"


def _quality() -> list[Panel]:
    """Live prequential quality: each event tested against the lists served before it."""
    evaluated = _quality_rate("evaluated_total", "strategy")
    by_split = 'split=~"repeat|first_time"'
    return [
        _row("Recommendation quality (live, prequential)"),
        _timeseries(
            "HR@K by strategy (rolling 30 min)",
            "Share of clicks, cart adds and purchases whose item was in the top-K list the "
            "strategy had served the shopper (FLYWHEEL_QUALITY_K, label k), tested before the "
            "model learns from the event; cold shoppers left out.",
            "percentunit",
            (f"{_quality_rate('hits_total', 'strategy')} / {evaluated}", "{{strategy}}"),
        ),
        _timeseries(
            "NDCG@K by strategy (rolling 30 min)",
            "Mean NDCG@K of the same events (1/log2(rank+1) for a hit, 0 for a miss).",
            "short",
            (f"{_quality_rate('ndcg_sum_total', 'strategy')} / {evaluated}", "{{strategy}}"),
        ),
        _timeseries(
            "HR@K, repeat vs first-time items (rolling 30 min)",
            "Hit rate on items the shopper interacted with before (repeat) and on new "
            "(shopper, item) pairs (first_time): a strategy must not win by repeating the past.",
            "percentunit",
            (
                f"{_quality_rate('hits_total', 'strategy, split', by_split)} / "
                f"{_quality_rate('evaluated_total', 'strategy, split', by_split)}",
                "{{strategy}} {{split}}",
            ),
        ),
        _timeseries(
            "Catalogue coverage by strategy",
            "Distinct items in the top-K lists written in the trailing "
            "FLYWHEEL_QUALITY_COVERAGE_WINDOW_S, over the items in the table.",
            "percentunit",
            (f"max by (strategy) ({_QUALITY}_coverage_ratio)", "{{strategy}}"),
        ),
        _timeseries(
            "Events tested/s by strategy",
            "Events tested against a strategy's list, and events with no list to test "
            "(new shoppers, a restart, users evicted from FLYWHEEL_QUALITY_USERS_MAX).",
            "ops",
            (_rate(f"{_QUALITY}_evaluated_total", "strategy"), "tested {{strategy}}"),
            (_rate(f"{_QUALITY}_not_evaluated_total", "strategy"), "not tested {{strategy}}"),
        ),
    ]


def _experiments() -> list[Panel]:
    by_arm = "experiment, arm"
    impressions = _rate("flywheel_job_arm_impressions_total", by_arm)
    purchases = 'flywheel_job_arm_conversions_total{action="purchase"}'
    carts = 'flywheel_job_arm_conversions_total{action="add_to_cart"}'
    return [
        _row("Experiments"),
        _timeseries(
            "CTR by arm",
            "Clicks attributed to an arm's impressions per impression (FLYWHEEL_EXPERIMENT); "
            "flywheel ab-report gives cumulative rates and their significance.",
            "percentunit",
            (f"{_rate('flywheel_job_arm_clicks_total', by_arm)} / {impressions}", "{{arm}}"),
        ),
        _timeseries(
            "Conversion by arm",
            "Purchases (and cart adds) attributed to an arm's impressions, per impression.",
            "percentunit",
            (f"{_rate(purchases, by_arm)} / {impressions}", "purchase {{arm}}"),
            (f"{_rate(carts, by_arm)} / {impressions}", "cart {{arm}}"),
        ),
        _timeseries(
            "Impressions/s by arm",
            "Impressions logged by the API for each arm of the experiment.",
            "ops",
            (impressions, "{{experiment}} {{arm}}"),
        ),
    ]


def _item_lists() -> list[Panel]:
    batch = "flywheel_job_neighbour_batch_items"
    return [
        _row("Item-to-item lists"),
        _timeseries(
            "Neighbour updates and item lists written/s",
            "Events applied to their item's neighbour counts, and item lists (product scene) "
            "written to Redis (at most one per item per FLYWHEEL_NEIGHBOUR_FLUSH_MS).",
            "ops",
            (_rate("flywheel_job_neighbour_updates_total"), "updates"),
            (_rate("flywheel_job_neighbour_lists_written_total"), "lists written"),
        ),
        _timeseries(
            "Item lists per Redis batch",
            "Item lists written per Redis round trip: mean and p99.",
            "short",
            (f"{_rate(f'{batch}_sum')} / {_rate(f'{batch}_count')}", "mean"),
            (_quantile(0.99, batch), "p99"),
        ),
    ]


_API_TRAFFIC = 'endpoint!="/metrics"'  # Prometheus's own scrapes are not traffic


def _api_error_ratio(status: str) -> str:
    """Share of the API's requests (scrapes of ``/metrics`` left out) answered ``status``:
    0, not "no data", while there is traffic but no such answer."""
    errors = f'flywheel_api_requests_total{{{_API_TRAFFIC},status=~"{status}"}}'
    total = f"flywheel_api_requests_total{{{_API_TRAFFIC}}}"
    return f"({_rate(errors)} or vector(0)) / {_rate(total)}"


def _api() -> list[Panel]:
    """The recommendation API: traffic, latency and errors by route (``endpoint`` label)."""
    latency = 'flywheel_api_request_seconds_bucket{endpoint=~"/v1/.*"}'
    return [
        _row("Recommendation API"),
        _timeseries(
            "API requests/s by route and status",
            "HTTP requests answered by the API (all worker processes), by route template and "
            "status code.",
            "reqps",
            (_rate("flywheel_api_requests_total", "endpoint, status"), "{{endpoint}} {{status}}"),
        ),
        _timeseries(
            "API latency by route",
            "Time from request to response inside the API, p50 and p99 per /v1 route (all "
            "statuses).",
            "s",
            (
                f"histogram_quantile(0.5, sum by (endpoint, le) (rate({latency}[{_RATE}])))",
                "p50 {{endpoint}}",
            ),
            (
                f"histogram_quantile(0.99, sum by (endpoint, le) (rate({latency}[{_RATE}])))",
                "p99 {{endpoint}}",
            ),
        ),
        _timeseries(
            "API error ratio",
            "Share of requests answered 5xx (the API failed: alert FlywheelApiErrorRatioHigh "
            "above 5%) and 4xx (refused input: bad queries, bad events, unknown users); "
            "scrapes of /metrics left out.",
            "percentunit",
            (_api_error_ratio("5.."), "5xx"),
            (_api_error_ratio("4.."), "4xx"),
        ),
        _timeseries(
            "API memory (RSS)",
            "Resident memory of each API instance's processes (its worker processes and their "
            "supervisor), summed. About 75 MB per worker; sizing: docs/operations.md.",
            "bytes",
            ("sum by (instance) (flywheel_api_resident_memory_bytes)", "{{instance}}"),
        ),
        _timeseries(
            "API CPU (cores) and processes",
            "CPU time the API's processes use per second (1 = one core) and how many processes "
            "each instance runs. Compare with requests/s: about 1 ms of CPU per list request on "
            "the development machine.",
            "none",
            (_rate("flywheel_api_cpu_seconds_total", "instance"), "CPU {{instance}}"),
            ("sum by (instance) (flywheel_api_processes)", "processes {{instance}}"),
        ),
    ]


def _flink() -> list[Panel]:
    return [
        _row("Flink"),
        _stat(
            "Metrics targets up",
            "Scrape targets up: the job's metrics (flywheel), Flink's reporter (flink) and the"
            " recommendation API (api).",
            "short",
            'sum by (job) (up{job=~"flywheel|flink|api"})',
            "{{job}}",
        ),
        _stat(
            "Job restarts",
            "Restarts of the Flink job since it was submitted.",
            "short",
            "max by (job_name) (flink_jobmanager_job_numRestarts)",
            "{{job_name}}",
        ),
        _timeseries(
            "Checkpoint duration",
            "Duration of the last completed checkpoint.",
            "ms",
            ("max by (job_name) (flink_jobmanager_job_lastCheckpointDuration)", "{{job_name}}"),
        ),
        _timeseries(
            "Failed checkpoints",
            "Checkpoints that failed in the interval (alert on 2 within 15 minutes).",
            "short",
            (
                "sum by (job_name) "
                f"(increase(flink_jobmanager_job_numberOfFailedCheckpoints[{_RATE}]))",
                "{{job_name}}",
            ),
        ),
        _timeseries(
            "Busy and backpressured time per task",
            "Share of each second a task is busy or waits on its downstream (ms/s).",
            "ms",
            (
                "max by (task_name) (flink_taskmanager_job_task_busyTimeMsPerSecond)",
                "busy {{task_name}}",
            ),
            (
                "max by (task_name) (flink_taskmanager_job_task_backPressuredTimeMsPerSecond)",
                "backpressured {{task_name}}",
            ),
        ),
        _timeseries(
            "JVM heap",
            "Heap used and maximum of the JobManager and each TaskManager.",
            "bytes",
            ("sum by (tm_id) (flink_taskmanager_Status_JVM_Memory_Heap_Used)", "TM {{tm_id}} used"),
            ("sum by (tm_id) (flink_taskmanager_Status_JVM_Memory_Heap_Max)", "TM {{tm_id}} max"),
            ("max(flink_jobmanager_Status_JVM_Memory_Heap_Used)", "JM used"),
        ),
        _timeseries(
            "Python worker memory (RSS)",
            "Resident memory of the process running the job's Python operators, per metrics "
            "endpoint. In thread mode (the default) that is the whole TaskManager JVM, which "
            "embeds the interpreter: JVM heap (panel JVM heap) + Python objects (item table "
            "replicas, caches) + JVM native memory; in process mode it is the Python worker. "
            "Sizing: docs/operations.md.",
            "bytes",
            (
                'sum by (instance) (process_resident_memory_bytes{job="flywheel"})',
                "{{instance}}",
            ),
        ),
    ]


def _layout(panels: list[Panel]) -> list[Panel]:
    """Give every panel an id and a gridPos: rows span the width, others fill two columns."""
    placed, x, y = [], 0, 0
    for number, panel in enumerate(panels, start=1):
        if panel["type"] == "row":
            y += _HEIGHT if x else 0
            x = 0
            placed.append({"id": number, **panel, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            y += 1
            continue
        placed.append(
            {"id": number, **panel, "gridPos": {"h": _HEIGHT, "w": _WIDTH, "x": x, "y": y}}
        )
        x += _WIDTH
        if x >= 24:
            x, y = 0, y + _HEIGHT
    return placed


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "options": [],
    }


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict (deterministic: same code, same output)."""
    return {
        "uid": DASHBOARD_UID,
        "title": "Flywheel",
        "description": "Real-time recommendations: events, freshness, model, API, Kafka and Flink.",
        "tags": ["flywheel", "flink", "kafka"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": [_datasource_variable()]},
        "annotations": {"list": []},
        "links": [],
        "panels": _layout(
            [
                *_traffic(),
                *_freshness_and_model(),
                *_quality(),
                *_item_lists(),
                *_experiments(),
                *_api(),
                *_flink(),
            ]
        ),
    }


def render() -> str:
    """The dashboard file's text."""
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` report whether the committed one is stale."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.dashboard", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH, help="file to write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m monitoring.dashboard", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
