"""The alert rules: promtool accepts them and their unit tests pass, each alert is tested both
firing and quiet, and every runbook link points at a heading of docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yml"
ALERT_TESTS = ROOT / "monitoring" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "docs/operations.md#"


def _promtool() -> str:
    path = shutil.which("promtool") or shutil.which("promtool", path="/usr/sbin:/usr/bin")
    assert path, "promtool not found: run scripts/install.sh (Debian package `prometheus`)"
    return path


def _run_promtool(*args: str) -> None:
    done = subprocess.run(
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading.

    >>> github_anchor("Upgrading with savepoints")
    'upgrading-with-savepoints'
    >>> github_anchor("FlywheelJobDown")
    'flywheeljobdown'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _doc_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", OPERATIONS.read_text(), flags=re.MULTILINE)
    return {github_anchor(h) for h in headings}


def test_promtool_checks_the_rules() -> None:
    _run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


def test_promtool_unit_tests_pass() -> None:
    _run_promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))


def test_the_expected_alerts_exist() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert names == {
        "FlywheelJobDown",
        "FlywheelNoEvents",
        "FlywheelDeadLetterRatioHigh",
        "FlywheelFreshnessP99High",
        "FlywheelKafkaLagGrowing",
        "FlywheelCheckpointFailures",
        "FlywheelQualityDrop",
        "FlywheelApiErrorRatioHigh",
        "FlywheelApiDown",
    }


def test_every_alert_has_for_severity_and_annotations() -> None:
    for rule in _alerts():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = rule.get("annotations", {})
        missing = {"summary", "description", "runbook_url"} - set(annotations)
        assert not missing, f"{name}: missing annotations {sorted(missing)}"


def test_every_runbook_url_is_a_heading_of_the_operations_guide() -> None:
    anchors = _doc_anchors()
    for rule in _alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), f"{rule['alert']}: {url}"
        assert url.removeprefix(RUNBOOK_PREFIX) in anchors, f"{rule['alert']}: no heading for {url}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names <= firing, f"never tested firing: {sorted(names - firing)}"
    assert names <= quiet, f"never tested quiet: {sorted(names - quiet)}"
