"""Event sources: tables with column mappings, OTTO, Complete Journey, the synthetic shop."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from connectors.datasets import (
    ColumnMapping,
    SyntheticShop,
    completejourney_events,
    otto_events,
    read_table,
    synthetic_events,
)
from flywheel.events import Event, parse_event

OTTO_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/otto_sample/train.jsonl"
T0_S = 1_700_000_000
T0_MS = T0_S * 1000
OTTO_MAP = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
_VALIDATION: dict[str, Any] = {"hmac_key": "k" * 16, "now_ms": T0_MS}


def shop_frame() -> pd.DataFrame:
    """Four rows in a foreign schema, out of time order, ids with leading zeros."""
    return pd.DataFrame(
        {
            "visitor": ["007", "42", "007", "42"],
            "sku": ["0100", "200", "300", "0100"],
            "kind": ["clicks", "orders", "carts", "clicks"],
            "when": [T0_S + 30, T0_S + 10, T0_S + 20, T0_S + 10],
            "cat": ["toys", None, "food", "toys"],
            "cost": [1.5, 2.0, None, 1.5],
        }
    )


FOREIGN = ColumnMapping(
    user="visitor", item="sku", action="kind", ts="when", category="cat", price="cost"
)


def test_csv_with_mapping_sorts_by_time_and_maps_actions(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    shop_frame().to_csv(path, index=False)

    events = list(read_table(path, FOREIGN, action_map=OTTO_MAP))

    assert [e["ts"] for e in events] == [
        T0_MS + 10_000,
        T0_MS + 10_000,
        T0_MS + 20_000,
        T0_MS + 30_000,
    ]
    assert [e["event_id"] for e in events] == ["clicks-1", "clicks-3", "clicks-2", "clicks-0"]
    assert events[0] == {
        "event_id": "clicks-1",
        "user_id": "42",
        "item_id": "200",
        "action": "purchase",
        "ts": T0_MS + 10_000,
        "price": 2.0,
    }
    assert events[-1]["user_id"] == "007" and events[-1]["item_id"] == "0100"
    assert events[-1]["category"] == "toys" and events[-1]["action"] == "click"
    assert "price" not in events[2]


def test_jsonl_with_millis_event_ids_and_default_action(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    frame = pd.DataFrame(
        {"event_id": ["b", "a"], "user_id": [1, 2], "item_id": [10, 20], "ts": [T0_MS + 5, T0_MS]}
    )
    frame.to_json(path, orient="records", lines=True)

    events = list(read_table(path, default_action="view"))

    assert [(e["event_id"], e["user_id"], e["item_id"]) for e in events] == [
        ("a", "2", "20"),
        ("b", "1", "10"),
    ]
    assert [e["ts"] for e in events] == [T0_MS, T0_MS + 5]
    assert {e["action"] for e in events} == {"view"}


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
def test_parquet_with_datetime_column(tmp_path: Path, tz: str | None) -> None:
    stamp = pd.Timestamp(T0_MS, unit="ms", tz="UTC")
    when = stamp.tz_convert(tz) if tz else stamp.tz_localize(None)
    path = tmp_path / "buys.parquet"
    pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "ts": [when]}).to_parquet(path)

    (event,) = read_table(path)

    assert event["ts"] == T0_MS
    assert event["action"] == "purchase"
    assert event["event_id"] == "buys-0"


def test_datetime_strings_and_integral_float_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    frame = pd.DataFrame(
        {
            "user_id": [1.0, None, 3.0],
            "item_id": ["a", "b", "c"],
            "ts": ["2023-11-14T22:13:20Z", "2023-11-14 22:13:21", "2023-11-14T23:13:22+01:00"],
        }
    )
    frame.to_parquet(path)

    events = list(read_table(path))

    assert [e["user_id"] for e in events] == ["1", "3"]  # the row without a user is dropped
    assert [e["ts"] for e in events] == [T0_MS, T0_MS + 2000]


def test_events_pass_the_job_validation(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    shop_frame().to_csv(path, index=False)

    for raw in read_table(path, FOREIGN, action_map=OTTO_MAP):
        assert isinstance(parse_event(orjson.dumps(raw), **_VALIDATION), Event)


def test_missing_columns_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    shop_frame().to_csv(path, index=False)

    with pytest.raises(ValueError, match="user column 'user_id'"):
        list(read_table(path))
    with pytest.raises(ValueError, match="brand column 'maker'"):
        list(read_table(path, ColumnMapping(user="visitor", item="sku", ts="when", brand="maker")))
    with pytest.raises(ValueError, match=r"expected a \.csv"):
        read_table(tmp_path / "clicks.xlsx")


def test_otto_sample() -> None:
    events = list(otto_events(OTTO_SAMPLE))

    assert len(events) == 862
    assert len({e["event_id"] for e in events}) == 862
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert set(Counter(e["action"] for e in events)) == {"click", "add_to_cart", "purchase"}
    assert len({e["user_id"] for e in events}) == 20
    assert all(isinstance(parse_event(orjson.dumps(e), **_VALIDATION), Event) for e in events)


def test_completejourney_purchases(tmp_path: Path) -> None:
    events = list(completejourney_events(limit=1000, cache_dir=tmp_path))

    assert len(events) == 1000
    assert (tmp_path / "completejourney_events_v1.parquet").exists()
    assert {e["action"] for e in events} == {"purchase"}
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    first = events[0]
    assert first["user_id"] == "900" and first["ts"] == 1483271606000  # 2017-01-01 11:53:26
    assert {"category", "brand", "price"} <= set(first)
    assert list(completejourney_events(limit=1000, cache_dir=tmp_path)) == events  # cached


def test_synthetic_is_seeded() -> None:
    first = list(synthetic_events(n_users=50, n_items=500, n_events=2000, seed=7))

    assert first == list(synthetic_events(n_users=50, n_items=500, n_events=2000, seed=7))
    assert first != list(synthetic_events(n_users=50, n_items=500, n_events=2000, seed=8))
    assert len({e["event_id"] for e in first}) == 2000


def test_synthetic_timestamps_follow_the_rate() -> None:
    events = list(synthetic_events(n_events=1001, start_ms=T0_MS, rate_per_s=100.0))

    assert events[0]["ts"] == T0_MS
    assert events[-1]["ts"] == T0_MS + 10_000
    assert all(a["ts"] <= b["ts"] for a, b in pairwise(events))


def test_synthetic_users_follow_their_hidden_taste() -> None:
    shop = SyntheticShop(n_users=200, n_items=2000, seed=3)
    events = list(shop.events(20_000))

    taste = shop.taste("u5")
    assert len(taste) == 3 and sum(taste.values()) == pytest.approx(1.0)
    in_taste = [shop.item_category(e["item_id"]) in shop.taste(e["user_id"]) for e in events]
    assert sum(in_taste) / len(events) > 0.85
    assert all(shop.item_category(e["item_id"]) == e["category"] for e in events[:100])
    actions = Counter(e["action"] for e in events)
    assert actions["view"] > actions["click"] > actions["add_to_cart"] > actions["purchase"] > 0
