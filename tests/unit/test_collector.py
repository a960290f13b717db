"""The job's garbage-collector thresholds."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flink_jobs.collector import OLD, YOUNG, tune_collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_young_collections_wait_longer_and_full_ones_are_rare(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    tune_collector()
    young, middle, old = gc.get_threshold()
    assert (young, middle, old) == (YOUNG, 10, OLD)
    assert young > 700 and old > 10
