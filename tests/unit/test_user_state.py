"""User state survives its byte encoding; settings fail fast with the variable's name."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from flink_jobs.user_state import UserState, decode_state, encode_state, new_features
from flywheel.settings import SettingsError, load_settings


def test_state_round_trips_exactly() -> None:
    settings = load_settings()
    features = new_features(settings)
    features.add("i1", "purchase", 1_700_000_000_000, "tea")
    vector = np.random.default_rng(0).normal(size=settings.n_factors).astype(np.float32)
    state = UserState(features, vector, ["e1", "e2"], 2)
    back = decode_state(encode_state(state), settings)
    np.testing.assert_array_equal(back.vector, vector)
    assert back.recent_ids == ["e1", "e2"] and back.n_events == 2
    assert back.features.to_dict() == features.to_dict()


def test_empty_state_is_a_new_user() -> None:
    state = decode_state(None, load_settings())
    assert state.vector is None and state.n_events == 0


@pytest.mark.parametrize(
    ("name", "value", "variable"),
    [
        ("n_factors", 0, "FLYWHEEL_N_FACTORS"),
        ("kafka_bootstrap", "nohost", "FLYWHEEL_KAFKA_BOOTSTRAP"),
        ("redis_url", "http://x", "FLYWHEEL_REDIS_URL"),
        ("windows_s", (86400, 3600), "FLYWHEEL_WINDOWS_S"),
        ("execution_mode", "turbo", "FLYWHEEL_EXECUTION_MODE"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: object, variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(**{name: value})


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TOP_N", "7")
    monkeypatch.setenv("FLYWHEEL_WINDOWS_S", "[600, 3600]")
    settings = load_settings()
    assert settings.top_n == 7 and settings.windows_s == (600, 3600)
    monkeypatch.setenv("FLYWHEEL_LEARNING_RATE", "-1")
    with pytest.raises(SettingsError, match="FLYWHEEL_LEARNING_RATE"):
        load_settings()


def test_topic_names_must_differ() -> None:
    with pytest.raises(SettingsError, match="must differ"):
        load_settings(dlq_topic="events")


def test_cart_and_item_context_round_trip_and_old_state_still_decodes() -> None:
    settings = load_settings(cart_items_max=2, neighbour_context=2)
    state = decode_state(None, settings)
    for item, action in [("a", "add_to_cart"), ("b", "add_to_cart"), ("c", "view")]:
        state.features.add(item, action, 1_700_000_000_000, "")
        state.context.push(item, 1_700_000_000_000, 1.0)
    state.features.add("d", "add_to_cart", 1_700_000_000_001, "")
    assert state.features.cart == ["b", "d"], "bounded by cart_items_max, newest last"
    state.features.add("b", "purchase", 1_700_000_000_002, "")
    assert state.features.cart == ["d"], "a purchased item leaves the cart"
    back = decode_state(encode_state(state), settings)
    assert back.features.cart == ["d"]
    assert back.context.entries == state.context.entries and len(back.context.entries) == 2
    raw = encode_state(state)
    (length,) = struct.unpack_from("<I", raw)
    header = orjson.loads(raw[4 : 4 + length])
    del header["f"]["cart"], header["c"]  # state written before carts and item contexts
    old = orjson.dumps(header)
    back = decode_state(struct.pack("<I", len(old)) + old + raw[4 + length :], settings)
    assert back.features.cart == [] and back.context.entries == []
    assert back.features.recent == ["a", "b", "c", "d", "b"]


def test_impressions_are_counted_but_not_remembered_as_choices() -> None:
    features = new_features(load_settings())
    features.add("shown", "impression", 1_700_000_000_000, "tea")
    features.add("clicked", "click", 1_700_000_000_001, "tea")
    assert features.recent == ["clicked"]
    assert features.categories == {"tea": 1}
    assert features.totals == {"impression": 1, "click": 1}


def test_a_list_impression_counts_one_impression_per_item_shown() -> None:
    features = new_features(load_settings())
    features.add("first", "impression", 1_700_000_000_000, "", count=10)
    features.add("one", "impression", 1_700_000_000_001)
    assert features.totals == {"impression": 11}
    assert {w: c.get("impression") for w, c in features.window_counts().items()} == {
        3600: 11,
        86400: 11,
    }
    assert features.recent == []
