"""What the job keeps per user in Flink keyed state, and its byte encoding.

One ``ValueState[bytes]`` per user holds: the windowed features
(:class:`~online_models.features.UserFeatures`), the user's factor vector, the ids of the
user's last ``dedupe_window`` events (to drop duplicates), the number of accepted events and
the user's last ``neighbour_context`` distinct items with time and weight
(:class:`~online_models.neighbours.ItemContext`, for the item-to-item lists).
The features include the user's purchase counts per item for the repeat term of the personal
score (``repeat_items_max`` items, kept only while the term is on: :func:`repeat_term`).
The value is ``<u32 header length><JSON header><float32 factors>``: one state read and one
write per event. Its size is bounded by the feature bounds plus ``4 * n_factors`` bytes, and it
expires after ``state_ttl_s`` without writes (Flink state TTL).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

from flink_jobs.item_sync import FIRST_PURCHASE, REBUY
from flywheel.settings import Settings
from online_models.features import UserFeatures
from online_models.neighbours import ItemContext
from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_counts import COUNTED_ACTIONS
from online_models.repeat_term import RepeatTerm

__all__ = [
    "UserState",
    "decode_state",
    "encode_state",
    "new_features",
    "purchase_mark",
    "rebuy_rates",
    "repeat_term",
]

_LEN = struct.Struct("<I")


@dataclass(slots=True)
class UserState:
    """One user's state (``vector`` is None until the first learnable event)."""

    features: UserFeatures
    vector: np.ndarray | None = None
    recent_ids: list[str] = field(default_factory=list)
    n_events: int = 0
    context: ItemContext = field(default_factory=ItemContext)


def new_features(settings: Settings) -> UserFeatures:
    """Empty features with the bounds from ``settings``."""
    return UserFeatures(
        windows_s=settings.windows_s,
        out_of_orderness_ms=settings.out_of_orderness_ms,
        recent_max=settings.recent_items_max,
        purchased_max=settings.purchased_max,
        categories_max=settings.categories_max,
        cart_max=settings.cart_items_max,
        repeat_items_max=settings.repeat_items_max if repeat_term(settings).active else 0,
        repeat_half_life_s=settings.repeat_half_life_s,
        repeat_units=COUNTED_ACTIONS,
    )


def repeat_term(settings: Settings) -> RepeatTerm:
    """The repeat term of the personal score. Off (and no counts kept) when its settings are
    all zero, and when purchased items are excluded: it would only rank items never listed."""
    if settings.exclude_purchased:
        return RepeatTerm()
    return RepeatTerm(
        settings.repeat_weight,
        settings.repeat_offset,
        settings.repeat_discovery_slots,
        settings.repeat_rebuy_weight,
    )


def rebuy_rates(settings: Settings) -> ItemRebuyRates | None:
    """The items' rebuy rates a subtask keeps for the repeat term (``None`` while the term
    does not weigh them), bounded like the item table (at most ``max_items`` items)."""
    return ItemRebuyRates(settings.max_items) if repeat_term(settings).rebuy_weight else None


def purchase_mark(features: UserFeatures, item: str, action: str) -> int:
    """What an event tells the items' rebuy rates, read *before* ``features.add`` records it:
    :data:`~flink_jobs.item_sync.REBUY` when it is a counted purchase of an item the user's
    repeat counts still hold, :data:`~flink_jobs.item_sync.FIRST_PURCHASE` for another counted
    purchase, 0 otherwise (and always 0 while no counts are kept). The benchmarked strategy
    uses the same rule (:meth:`~online_models.repeat_aware.RepeatAwareStrategy.learn`)."""
    if not features.repeats.max_items or features.repeat_units.get(action, 0.0) <= 0:
        return 0
    return REBUY if item in features.repeats.entries else FIRST_PURCHASE


def encode_state(state: UserState) -> bytes:
    """Bytes stored in Flink state."""
    fields = {"f": state.features.to_dict(), "ids": state.recent_ids, "n": state.n_events}
    if state.context.entries:
        fields["c"] = state.context.to_list()
    header = orjson.dumps(fields)
    vector = b"" if state.vector is None else state.vector.astype(np.float32).tobytes()
    return _LEN.pack(len(header)) + header + vector


def decode_state(raw: bytes | None, settings: Settings) -> UserState:
    """Inverse of :func:`encode_state`; ``None`` (no state yet) gives a fresh user."""
    features = new_features(settings)
    context = ItemContext(settings.neighbour_context, settings.neighbour_gap_s * 1000)
    if not raw:
        return UserState(features, context=context)
    raw = bytes(raw)
    (length,) = _LEN.unpack_from(raw)
    header = orjson.loads(raw[4 : 4 + length])
    body = raw[4 + length :]
    vector = np.frombuffer(body, np.float32).copy() if body else None
    context.load(header.get("c", ()))
    return UserState(features.load(header["f"]), vector, header["ids"], header["n"], context)
