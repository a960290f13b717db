"""The benchmarks' users are built with the job's own per-user logic and list writer."""

from __future__ import annotations

import numpy as np
import orjson

from bench.user_data import item_table, replay, written_entries
from connectors.datasets import SyntheticShop
from connectors.redis_lists import decode_rec_list
from flywheel.events import pseudonymise
from flywheel.settings import load_settings
from online_models.implicit_mf import ImplicitMF

T0 = 1_700_000_000_000


def _event(k: int, user: str = "ann", action: str = "view", item: str = "i1") -> dict[str, object]:
    return {"event_id": f"e{k}", "user_id": user, "item_id": item, "action": action, "ts": T0 + k}


def test_duplicates_are_dropped_within_the_dedupe_window_only() -> None:
    settings = load_settings(dedupe_window=3)
    events = [_event(k) for k in range(5)] + [_event(4), _event(0)]
    out = replay(events, settings)
    state = out.states[pseudonymise("ann", settings.hmac_key)]
    assert (out.accepted, out.duplicates) == (6, 1)  # e0 had left the window: accepted again
    assert state.recent_ids == ["e3", "e4", "e0"] and state.n_events == 6


def test_a_vector_appears_with_the_first_learnable_event() -> None:
    settings = load_settings()
    events = [_event(0, "bob", "impression"), _event(1, "cy", "impression"), _event(2, "cy")]
    out = replay(events, settings)
    bob, cy = (out.states[pseudonymise(u, settings.hmac_key)] for u in ("bob", "cy"))
    model = ImplicitMF(n_factors=settings.n_factors, init_std=settings.init_std, seed=settings.seed)
    assert bob.vector is None
    expected = model.new_user_vector(pseudonymise("cy", settings.hmac_key))
    np.testing.assert_array_equal(cy.vector, expected)
    assert out.trending(settings) == [("i1", settings.weight_view)]


def test_invalid_events_are_counted_not_kept() -> None:
    out = replay([_event(0, action="teleport"), {"user_id": "x"}], load_settings())
    assert (out.rejected, out.accepted, out.states) == (2, 0, {})


def test_every_user_gets_a_list_and_features_as_the_job_writes_them() -> None:
    settings = load_settings(top_n=10, cold_user_events=3)
    shop = SyntheticShop(n_users=30, n_items=300, seed=2)
    out = replay(shop.events(600), settings)
    items = item_table((f"i{k}" for k in range(300)), settings)
    entries = dict(e for batch in written_entries(out.states, items, [], settings) for e in batch)
    assert len(entries) == 2 * len(out.states)
    for user, state in out.states.items():
        rec = decode_rec_list(entries[f"rec:home:{user}"])
        warm = state.n_events >= settings.cold_user_events and state.vector is not None
        assert rec.user == user and rec.strategy == ("online_mf" if warm else "trending")
        assert len(rec.items) == (10 if warm else 0)  # no trending list was given
        assert not set(dict(rec.items)) & set(state.features.purchased)
        features = orjson.loads(entries[f"features:{user}"])
        assert features["n_events"] == state.n_events
