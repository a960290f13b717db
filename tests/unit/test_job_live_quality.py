"""The job's live-quality adapter: what it tests, how it splits, what it exports (into a fresh
Prometheus registry)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from flink_jobs.live_quality import JobQuality, shared_coverage
from flink_jobs.user_state import UserState, new_features
from flywheel.settings import Settings, load_settings
from monitoring.metrics import JobMetrics


def _quality(**overrides: object) -> tuple[JobQuality, CollectorRegistry, Settings]:
    settings = load_settings(quality_k=3, **overrides)
    registry = CollectorRegistry()
    return JobQuality(settings, JobMetrics(registry)), registry, settings


def _state(settings: Settings, *remembered: tuple[str, str]) -> UserState:
    state = UserState(new_features(settings))
    for item, action in remembered:
        state.features.add(item, action, 1_000, "")
        state.n_events += 1
    return state


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no series {name}{labels}"
    return value


def test_events_are_tested_before_learning_and_exported_per_strategy_and_split() -> None:
    quality, registry, settings = _quality(quality_coverage_window_s=61)
    quality.personal({"u": [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]}, now_s=100)
    quality.trending([("b", 5.0), ("z", 4.0)], now_s=100)
    state = _state(settings, ("b", "view"))
    quality.test("u", "b", "click", state)  # repeat: rank 2 personal, rank 1 trending
    quality.test("u", "d", "purchase", state)  # first time: 4th, cut at K=3
    quality.test("u", "a", "view", state)  # views are learnt, never scored
    quality.test("u", "a", "impression", state)
    quality.test("new", "z", "add_to_cart", _state(settings))  # cold; no personal list
    quality.export(n_items=10, now_s=100)

    k = {"k": "3"}
    evaluated = "flywheel_job_quality_evaluated_total"
    assert _value(registry, evaluated, strategy="online_mf", split="repeat") == 1
    assert _value(registry, evaluated, strategy="online_mf", split="first_time") == 1
    assert _value(registry, evaluated, strategy="popularity", split="cold") == 1
    hits, ndcg = "flywheel_job_quality_hits_total", "flywheel_job_quality_ndcg_sum_total"
    assert _value(registry, hits, strategy="online_mf", split="repeat", **k) == 1
    assert _value(registry, hits, strategy="online_mf", split="first_time", **k) == 0
    assert _value(registry, ndcg, strategy="online_mf", split="repeat", **k) == pytest.approx(
        1 / math.log2(3)
    )
    assert _value(registry, ndcg, strategy="popularity", split="repeat", **k) == 1.0
    assert _value(registry, ndcg, strategy="popularity", split="cold", **k) == pytest.approx(
        1 / math.log2(3)
    )
    not_evaluated = "flywheel_job_quality_not_evaluated_total"
    assert _value(registry, not_evaluated, strategy="online_mf") == 1
    assert _value(registry, not_evaluated, strategy="popularity") == 0
    coverage = "flywheel_job_quality_coverage_ratio"
    assert _value(registry, coverage, strategy="online_mf") == pytest.approx(3 / 10)  # a, b, c
    assert _value(registry, coverage, strategy="popularity") == pytest.approx(2 / 10)


def test_exports_add_only_what_is_new_and_forget_drops_the_list() -> None:
    quality, registry, settings = _quality()
    quality.personal({"u": [("a", 1.0)]}, now_s=0)
    state = _state(settings, ("x", "view"))
    quality.test("u", "a", "click", state)
    quality.export(n_items=1, now_s=0)
    quality.export(n_items=1, now_s=0)  # nothing new: the counters stay
    labels = {"strategy": "online_mf", "split": "first_time", "k": "3"}
    assert _value(registry, "flywheel_job_quality_hits_total", **labels) == 1
    quality.forget("u")
    quality.test("u", "a", "click", state)
    quality.export(n_items=1, now_s=0)
    assert _value(registry, "flywheel_job_quality_hits_total", **labels) == 1
    not_evaluated = "flywheel_job_quality_not_evaluated_total"
    assert _value(registry, not_evaluated, strategy="online_mf") == 1


def test_actions_with_zero_weight_are_not_scored() -> None:
    quality, registry, settings = _quality(weight_click=0.0)
    quality.personal({"u": [("a", 1.0)]}, now_s=0)
    quality.test("u", "a", "click", _state(settings, ("x", "view")))
    quality.export(n_items=1, now_s=0)
    labels = {"strategy": "online_mf", "split": "first_time"}
    assert _value(registry, "flywheel_job_quality_evaluated_total", **labels) == 0


def test_subtasks_of_a_process_share_the_coverage_window() -> None:
    assert shared_coverage(7200) is shared_coverage(7200)
    assert shared_coverage(7200) is not shared_coverage(7201)
