"""Per-user state and Redis values as the job would hold and write them, built without Flink.

The memory and serving benchmarks need realistic users: states after real-looking histories
and the list and features values the job writes for them. :func:`replay` feeds a stream of
events through the job's own validation (:func:`flywheel.events.check_event`) and the same
per-event state changes as the keyed operator (``flink_jobs/user_processor.py``): duplicate
ids dropped, the last ``dedupe_window`` event ids kept, windowed features updated, the item
context (for item-to-item lists) pushed and a user vector created at each learnable event,
trending fed with the positives. It does not
take the SGD steps (the state's size does not depend on the factors' values). Batches of
:func:`written_entries` come from the job's own list builder and feature view.

State kept: one :class:`~flink_jobs.user_state.UserState` per user of the stream (each
bounded by the settings' caps) and one windowed popularity counter, for as long as the caller
holds the :class:`Replay`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.redis_lists import features_suffix, rec_suffix
from flink_jobs.item_neighbours import context_record
from flink_jobs.refresh import DirtyUser, build_lists
from flink_jobs.user_state import UserState, decode_state
from flywheel.events import Rejection, check_event
from flywheel.settings import Settings
from online_models.implicit_mf import ImplicitMF
from online_models.item_table import ItemTable
from online_models.popularity import WindowedPopularity

__all__ = ["Replay", "item_table", "replay", "written_entries"]

_JOB_BATCH_USERS = 1024  # users per refresh batch in the job


@dataclass
class Replay:
    """Outcome of :func:`replay`: user pseudonym -> state, trending counts, event counts."""

    states: dict[str, UserState]
    popularity: WindowedPopularity
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    items: dict[str, None] = field(default_factory=dict)  # item ids, first-seen order

    def trending(self, settings: Settings) -> list[tuple[str, float]]:
        """The trending list as the job writes it (top ``top_n``)."""
        return self.popularity.top(settings.top_n)


def replay(events: Iterable[Mapping[str, Any]], settings: Settings) -> Replay:
    """Run ``events`` (schema of :mod:`flywheel.events`) through the job's per-user logic.

    >>> from flywheel.settings import load_settings
    >>> e = {"event_id": "e1", "user_id": "ann", "item_id": "i1", "action": "view", "ts": 10**12}
    >>> out = replay([e, e, {**e, "event_id": "e2", "action": "teleport"}], load_settings())
    >>> out.accepted, out.duplicates, out.rejected, len(out.states)
    (1, 1, 1, 1)
    """
    model = ImplicitMF(
        n_factors=settings.n_factors, init_std=settings.init_std, seed=settings.seed,
        action_weights=settings.action_weights, max_items=1,
    )  # fmt: skip
    out = Replay({}, WindowedPopularity(settings.trending_window_s))
    now_ms = int(time.time() * 1000)
    keep = -settings.dedupe_window or None  # as the operator: 0 keeps no id
    for raw in events:
        event = check_event(orjson.dumps(raw), settings, now_ms)
        if isinstance(event, Rejection) or event.action == "forget":
            out.rejected += 1
            continue
        state = out.states.get(event.user)
        if state is None:
            state = out.states[event.user] = decode_state(None, settings)  # a new user
        if event.event_id in state.recent_ids:
            out.duplicates += 1
            continue
        state.recent_ids.append(event.event_id)
        del state.recent_ids[:keep]
        state.n_events += 1
        state.features.add(event.item, event.action, event.ts, event.category, len(event.shown))
        weight = model.weight_of(event.action)
        if weight > 0:
            context_record(state.context, event.item, event.ts, weight, out.popularity.weight)
            if state.vector is None:
                state.vector = model.new_user_vector(event.user)
            out.popularity.add(event.item, weight, event.ts)
        out.items[event.item] = None
        out.accepted += 1
    return out


def item_table(item_ids: Iterable[str], settings: Settings) -> ItemTable:
    """An item table holding ``item_ids`` with their initial factors (as the job's replica)."""
    table = ItemTable(settings.n_factors, settings.init_std, settings.seed, settings.max_items)
    for item in item_ids:
        table.ensure(item)
    return table


def written_entries(
    states: Mapping[str, UserState],
    items: ItemTable,
    trending: list[tuple[str, float]],
    settings: Settings,
) -> Iterator[list[tuple[str, bytes]]]:
    """Batches of ``(key suffix, value)``: each user's home list and features, as the job's
    refresh writes them (one batch per ``1024`` users, like the job's refresh batches)."""
    users = list(states)
    for start in range(0, len(users), _JOB_BATCH_USERS):
        batch = {
            u: DirtyUser(states[u], states[u].features.max_ts)
            for u in users[start : start + _JOB_BATCH_USERS]
        }
        entries = []
        for user, _strategy, value in build_lists(batch, items, trending, settings):
            entries.append((rec_suffix("home", user), value))
            entries.append((features_suffix(user), orjson.dumps(batch[user].features())))
        yield entries
