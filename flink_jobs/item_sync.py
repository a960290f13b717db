"""Keeping one item table per Flink subtask in sync through a shared log of item deltas.

Every subtask learns on its own users' events and changes item factors as it goes. Each
change is an additive delta; subtasks publish their deltas in batches to one single-partition
topic and every subtask reads that topic back, so all of them see every delta in the same
order.

State kept per subtask (:class:`ItemReplica`):

- ``shared``: the item table built only from the topic (identical on every subtask at the
  same topic offset; this is what Flink's broadcast state persists, one entry per item);
- ``local``: the table the subtask scores and learns with: ``shared`` plus the subtask's own
  deltas that have not come back from the topic yet ("read your writes");
- ``pending``: how many of those own deltas are in flight, per item. They are counted down
  as their echo arrives, so memory is bounded by the items touched within about one flush
  interval;
- ``rebuys`` (only while the served repeat term weighs rebuy rates): every item's purchases
  and rebuys over all users (:class:`~online_models.rebuy_rates.ItemRebuyRates`), counted from
  the purchase marks the deltas carry (:data:`FIRST_PURCHASE`, :data:`REBUY`) as they come
  back from the topic, so every subtask holds the same counts at the same offset (its own
  purchases too: the rates have no "read your writes"). Only items
  the shared table holds are counted, so it has at most ``max_items`` entries and never
  evicts one. The counts are persisted with the item's factors (:meth:`ItemReplica.shared_entry`)
  and reloaded on restore, so they resume from the checkpoint with the topic's offset. Like
  the factors, they share the log's at-least-once delivery: a purchase whose deltas were
  published both before a crash and again on replay is counted twice.

With one subtask, ``local`` is updated exactly as a standalone model would be, so the job
learns bit-identical factors. With several, a subtask sees other subtasks' deltas after one
round trip through the topic (bounded staleness).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from online_models.implicit_mf import ItemDeltas
from online_models.item_table import CatalogueFull, ItemTable
from online_models.rebuy_rates import ItemRebuyRates

__all__ = [
    "FIRST_PURCHASE",
    "REBUY",
    "DeltaBatch",
    "ItemReplica",
    "decode_batch",
    "encode_batch",
]

FIRST_PURCHASE = 1
"""Purchase mark of a positive: a counted purchase of an item new to the user."""
REBUY = 2
"""Purchase mark of a positive: a counted purchase of an item the user had bought before."""

_HEADER = struct.Struct("<HIHI")  # origin subtask, deltas, factors, id bytes
_CATEGORIES = struct.Struct("<I")  # bytes of the joined categories (formats 2 and 3)
_COUNTS = struct.Struct("<II")  # an item's purchases and rebuys, after its persisted factors
# Marks outside the base64 alphabet: "~" batches carry categories, "!" categories and
# purchase marks; unmarked batches (the first format) carry neither.
_FORMAT_2 = "~"
_FORMAT_3 = "!"


@dataclass(frozen=True, slots=True)
class DeltaBatch:
    """Deltas published by one subtask, with the positives' weights, times and categories for
    trending."""

    origin: int
    items: list[str]
    factors: np.ndarray  # m x k float32
    bias: np.ndarray  # m float32
    weights: np.ndarray  # m float32: the positive's weight, 0 for sampled negatives
    ts: np.ndarray  # m int64: event time of the positive, 0 for negatives
    categories: list[str] | None = None  # m: the positive's category, "" if none / negatives
    purchases: np.ndarray | None = None  # m uint8: the positive's purchase mark, 0 otherwise

    def category(self, i: int) -> str | None:
        """The category sent with delta ``i``, ``None`` when there is none."""
        return (self.categories[i] or None) if self.categories else None


def encode_batch(batch: DeltaBatch) -> str:
    """Compact text form (``!`` + base64 of a binary record) for a Kafka string record.

    Batches in the earlier formats (``~``: without purchase marks; no mark: without categories
    either) still decode.
    """
    m = len(batch.items)
    ids = "\x1f".join(batch.items).encode()
    categories = "\x1f".join(batch.categories or [""] * m).encode()
    purchases = np.zeros(m, np.uint8) if batch.purchases is None else batch.purchases
    header = _HEADER.pack(batch.origin, len(batch.items), batch.factors.shape[1], len(ids))
    body = b"".join(
        (
            header,
            ids,
            batch.factors.astype(np.float32).tobytes(),
            batch.bias.astype(np.float32).tobytes(),
            batch.weights.astype(np.float32).tobytes(),
            batch.ts.astype(np.int64).tobytes(),
            _CATEGORIES.pack(len(categories)),
            categories,
            purchases.astype(np.uint8).tobytes(),
        )
    )
    return _FORMAT_3 + base64.b64encode(body).decode()


def decode_batch(text: str) -> DeltaBatch:
    """Inverse of :func:`encode_batch`."""
    marks_purchases = text.startswith(_FORMAT_3)
    carries_categories = marks_purchases or text.startswith(_FORMAT_2)
    body = base64.b64decode(text[1:] if carries_categories else text)
    origin, m, k, n_ids = _HEADER.unpack_from(body)
    pos = _HEADER.size
    items = body[pos : pos + n_ids].decode().split("\x1f") if m else []
    pos += n_ids
    factors = np.frombuffer(body, np.float32, m * k, pos).reshape(m, k)
    pos += m * k * 4
    bias = np.frombuffer(body, np.float32, m, pos)
    weights = np.frombuffer(body, np.float32, m, pos + m * 4)
    ts = np.frombuffer(body, np.int64, m, pos + m * 8)
    categories = purchases = None
    if carries_categories and m:
        pos += m * 16
        (n_categories,) = _CATEGORIES.unpack_from(body, pos)
        start = pos + _CATEGORIES.size
        categories = body[start : start + n_categories].decode().split("\x1f")
        if marks_purchases:
            purchases = np.frombuffer(body, np.uint8, m, start + n_categories)
    return DeltaBatch(origin, items, factors, bias, weights, ts, categories, purchases)


def _rows(table: ItemTable, items: list[str]) -> np.ndarray:
    """Rows of ``items`` in ``table`` (added if new, in order), -1 where the table is full."""
    get = table.index.get
    rows = [get(item) for item in items]
    if None in rows:  # new items: rare once the catalogue is known
        for i, row in enumerate(rows):
            if row is None:
                try:
                    rows[i] = table.ensure(items[i])
                except CatalogueFull:
                    rows[i] = -1
    return np.array(rows, np.int64)


class ItemReplica:
    """One subtask's view of the item table; see the module docstring."""

    def __init__(self, local: ItemTable, origin: int, rebuys: ItemRebuyRates | None = None):
        self.local = local
        self.origin = origin
        self.shared = ItemTable(local.n_factors, local.init_std, local.seed, local.max_items)
        self.pending: dict[str, int] = {}
        self.rebuys = rebuys
        self._out: list[tuple[ItemDeltas, float, int, str, int]] = []
        self.refused = 0
        self._out_count = 0

    def record_own(
        self, deltas: ItemDeltas, weight: float, ts: int, category: str = "", purchase: int = 0
    ) -> None:
        """Remember deltas the local model has already applied, to publish them later
        (``category``: the positive item's category from the event, "" when it had none;
        ``purchase``: its purchase mark, :data:`FIRST_PURCHASE`, :data:`REBUY` or 0)."""
        for item in deltas.items:
            self.pending[item] = self.pending.get(item, 0) + 1
        self._out.append((deltas, weight, ts, category.replace("\x1f", " "), purchase))
        self._out_count += len(deltas.items)

    @property
    def unpublished(self) -> int:
        """Deltas recorded but not yet taken by :meth:`take_batch`."""
        return self._out_count

    def take_batch(self) -> DeltaBatch | None:
        """All unpublished own deltas as one batch (None when there are none)."""
        if not self._out:
            return None
        items: list[str] = []
        weights: list[float] = []
        ts: list[int] = []
        categories: list[str] = []
        purchases: list[int] = []
        for deltas, weight, event_ts, category, purchase in self._out:
            negatives = len(deltas.items) - 1
            items.extend(deltas.items)
            weights.extend([weight] + [0.0] * negatives)
            ts.extend([event_ts] + [0] * negatives)
            categories.extend([category] + [""] * negatives)
            purchases.extend([purchase] + [0] * negatives)
        batch = DeltaBatch(
            self.origin,
            items,
            np.concatenate([out[0].factors for out in self._out]),
            np.concatenate([out[0].bias for out in self._out]),
            np.asarray(weights, np.float32),
            np.asarray(ts, np.int64),
            categories,
            np.asarray(purchases, np.uint8),
        )
        self._out, self._out_count = [], 0
        return batch

    def apply_published(self, batch: DeltaBatch) -> set[str]:
        """Apply a batch read from the topic; returns the items whose shared row changed."""
        items = batch.items
        rows = _rows(self.shared, items)
        kept = rows >= 0  # items beyond a full table's capacity are skipped (and counted)
        self.refused += int(len(items) - kept.sum())
        self.shared.apply_all(rows[kept], batch.factors[kept], batch.bias[kept])
        if self.rebuys is not None and batch.purchases is not None:
            self._count_purchases(items, batch.purchases, kept)
        if batch.origin == self.origin:
            pop = self._pop_pending
            fresh = [i for i, item in enumerate(items) if not pop(item)]
        else:
            fresh = list(range(len(items)))
        if fresh:
            local = _rows(self.local, [items[i] for i in fresh])
            ok = local >= 0
            picked = np.asarray(fresh)[ok]
            self.local.apply_all(local[ok], batch.factors[picked], batch.bias[picked])
        return {item for item, keep in zip(items, kept.tolist(), strict=True) if keep}

    def _count_purchases(self, items: list[str], marks: np.ndarray, kept: np.ndarray) -> None:
        """Count the marked purchases of items the shared table holds in ``rebuys``."""
        assert self.rebuys is not None
        for i in np.flatnonzero((marks > 0) & kept).tolist():
            self.rebuys.add(items[i], bool(marks[i] == REBUY))

    def _pop_pending(self, item: str) -> bool:
        """Count one own delta of ``item`` as echoed; False if none was pending."""
        left = self.pending.get(item, 0)
        if not left:
            return False
        if left == 1:
            del self.pending[item]
        else:
            self.pending[item] = left - 1
        return True

    def shared_entries(self, items: Collection[str]) -> dict[str, bytes]:
        """:meth:`shared_entry` of each of ``items`` (held by the shared table), from one
        gather of their rows: what the job persists for the items a batch changed."""
        names = list(items)
        table, k = self.shared, self.shared.n_factors
        rows = np.array([table.index[item] for item in names], np.int64)
        block = np.empty((len(names), k + 1), np.float32)
        block[:, :k] = table.factors[rows]
        block[:, k] = table.bias[rows]
        raw, width = block.tobytes(), 4 * (k + 1)
        counts_of = self.rebuys.entries.get if self.rebuys is not None else None
        entries = {}
        for i, item in enumerate(names):
            value = raw[i * width : (i + 1) * width]
            counts = counts_of(item) if counts_of is not None else None
            entries[item] = value + _COUNTS.pack(*counts) if counts else value
        return entries

    def shared_entry(self, item: str) -> bytes:
        """Bytes persisted for ``item``: its shared factors followed by its shared bias, then
        its purchase and rebuy counts when ``rebuys`` has any."""
        return self.shared_entries((item,))[item]

    def restore_entry(self, item: str, value: bytes) -> None:
        """Reload one persisted item into both tables (after a restart nothing is pending),
        and its rebuy counts when they were persisted and ``rebuys`` is kept."""
        k = self.shared.n_factors
        vec = np.frombuffer(value, np.float32, k + 1)
        for table in (self.shared, self.local):
            row = table.ensure(item)
            table.factors[row] = vec[:k]
            table.bias[row] = vec[k]
        if self.rebuys is not None and len(value) >= 4 * (k + 1) + _COUNTS.size:
            self.rebuys.restore(item, *_COUNTS.unpack_from(value, 4 * (k + 1)))
