"""The memory benchmark's user at every cap bounds the users of a real-looking stream."""

from __future__ import annotations

from bench.memory import state_at_caps, state_parts
from bench.user_data import replay
from connectors.datasets import SyntheticShop
from flink_jobs.user_state import encode_state
from flywheel.settings import load_settings


def test_every_bounded_field_is_full() -> None:
    settings = load_settings()
    state = state_at_caps(settings, id_chars=10, item_chars=6, category_chars=3)
    f = state.features
    assert len(state.recent_ids) == settings.dedupe_window
    assert len(f.recent) == settings.recent_items_max
    assert len(f.purchased) == settings.purchased_max
    assert len(f.categories) == settings.categories_max
    assert len(f.cart) == settings.cart_items_max
    assert len(state.context.entries) == settings.neighbour_context
    windows = f.window_counts()
    assert all(len(windows[w]) == 4 for w in settings.windows_s)  # every action in every window
    assert state.vector is not None and len(state.vector) == settings.n_factors


def test_no_replayed_user_is_larger_than_the_user_at_caps() -> None:
    settings = load_settings(dedupe_window=64, purchased_max=40, categories_max=8)
    shop = SyntheticShop(n_users=20, n_items=500, n_categories=12, seed=5, rate_per_s=0.05)
    out = replay(shop.events(4000), settings)  # ~200 events per user over ~22 hours
    longest_id = max(len(i) for s in out.states.values() for i in s.recent_ids)
    caps = state_at_caps(settings, id_chars=longest_id, item_chars=4, category_chars=3)
    largest = max(len(encode_state(s)) for s in out.states.values())
    assert largest <= len(encode_state(caps))
    assert largest > len(encode_state(caps)) // 2  # heavy users come close to the caps


def test_the_named_parts_account_for_almost_all_of_a_full_state() -> None:
    settings = load_settings()
    state = state_at_caps(settings, id_chars=22, item_chars=7, category_chars=12)
    total, parts = len(encode_state(state)), state_parts(state)
    assert parts["vector"] == 4 * settings.n_factors
    assert sum(parts.values()) <= total < sum(parts.values()) + 1024  # a new big field fails
