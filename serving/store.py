"""The API's asynchronous view of Flywheel's Redis keys (layout: :mod:`connectors.redis_lists`).

One round trip per recommendation request reads the user's home list, the user's features,
the trending list and the neighbour lists the scene needs: an ``MGET`` (home; product with the
item's list), or for the cart scene a Lua script that reads the same keys, takes the cart from
the features and reads the neighbour lists of its newest :data:`CART_LISTS_MAX` items
(``EVALSHA``; the script computes key names, so it needs a single Redis, not Redis Cluster);
one ``GET`` reads a user's features alone (the web page). Only when a list needs trending
(a cold shopper, a product without neighbours) a second round trip reads per-category
trending: an ``MGET`` of the shopper's categories' lists, or for a product a Lua script that
looks its category up in the item-category hash and reads that category's list. Diversity by
category reads the categories of a list's items with ``HMGET`` through
:class:`CategoryCache`. Values the job wrote are decoded
here; an undecodable value is logged and treated as missing, so a
bad key degrades one answer to trending, never to an error. The bandit of an experiment reads
the per-arm counts with one ``HGETALL`` (at most once a second, :mod:`serving.assignment`).
State: the client's connection pool (closed by :meth:`RedisStore.close`), the trending list
last decoded with its bytes (one list, replaced when Redis holds other bytes): every request
reads trending, but it changes about once a second, so it is decoded once per change; and the
:class:`CategoryCache` of item categories (bounded, emptied every ``CATEGORY_CACHE_S``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from connectors.arm_counts import arms_key, decode_counts
from connectors.redis_lists import (
    SCENES,
    category_trending_key,
    decode_item_list,
    decode_rec_list,
    features_key,
    item_categories_key,
    item_list_key,
    rec_key,
    trending_key,
)
from flywheel.settings import Settings
from online_models.experiments import ArmCounts
from serving.recommend import Snapshot

__all__ = ["CART_LISTS_MAX", "CATEGORY_CACHE_S", "CategoryCache", "RedisStore"]

CART_LISTS_MAX = 10
"""Neighbour lists read for a cart: those of its newest items."""
CATEGORY_CACHE_S = 300.0
"""Seconds an item's category is reused before it is read again (a re-filed item shows its new
category within this time)."""
_CATEGORY_CACHE_MAX = 200_000
# KEYS: the item-category hash; ARGV: item, category-list key prefix. The item's category's
# trending list, or nil.
_PRODUCT_CATEGORY_SCRIPT = """
local category = redis.call('HGET', KEYS[1], ARGV[1])
if not category then return false end
return redis.call('GET', ARGV[2] .. category)
"""
log = logging.getLogger(__name__)
# KEYS: home list, features, trending; ARGV: neighbour-list key prefix, max lists. Returns the
# three values, then (item, neighbour list) pairs for the cart's newest items.
_CART_SCRIPT = """
local values = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
if not values[2] then return values end
local ok, features = pcall(cjson.decode, values[2])
if not ok or type(features) ~= 'table' or type(features['cart']) ~= 'table' then
  return values
end
local cart, items, keys = features['cart'], {}, {}
for i = #cart, math.max(1, #cart - tonumber(ARGV[2]) + 1), -1 do
  local item = cart[i]
  if type(item) == 'string' or type(item) == 'number' then
    items[#items + 1] = tostring(item)
    keys[#keys + 1] = ARGV[1] .. tostring(item)
  end
end
if #keys == 0 then return values end
local lists = redis.call('MGET', unpack(keys))
for i = 1, #keys do
  values[#values + 1] = items[i]
  values[#values + 1] = lists[i]
end
return values
"""


class RedisStore:
    """Reads snapshots and deletes a user's keys under ``settings.redis_prefix``.

    ``user`` arguments are pseudonyms, never raw ids.
    """

    def __init__(self, settings: Settings, timeout_s: float = 2.0) -> None:
        self.prefix = settings.redis_prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._cart_script = self.client.register_script(_CART_SCRIPT)
        self._product_script = self.client.register_script(_PRODUCT_CATEGORY_SCRIPT)
        self.categories = CategoryCache(self.client, item_categories_key(self.prefix))
        self._trending_raw: bytes | None = None
        self._trending: list[tuple[str, float]] = []

    async def snapshot(
        self, user: str, scene: str = "home", item_id: str | None = None
    ) -> Snapshot:
        """What ``scene`` needs for the user, in one round trip: home list, features, trending,
        and the neighbour lists of ``item_id`` (product) or of the cart's items (cart)."""
        keys = [
            rec_key(self.prefix, "home", user),
            features_key(self.prefix, user),
            trending_key(self.prefix),
        ]
        if scene == "cart":
            prefix = item_list_key(self.prefix, "")
            values = await self._cart_script(keys=keys, args=[prefix, CART_LISTS_MAX])
            pairs = [(str(values[i], "utf-8"), values[i + 1]) for i in range(3, len(values), 2)]
        elif scene == "product" and item_id:
            *values, raw_similar = await self.client.mget(
                [*keys, item_list_key(self.prefix, item_id)]
            )
            pairs = [(item_id, raw_similar)]
        else:
            values, pairs = await self.client.mget(keys), []
        raw_list, raw_features, raw_trending = values[:3]
        neighbours = {}
        for item, raw in pairs:
            similar = _decode(item_list_key(self.prefix, item), raw, decode_item_list)
            if similar is not None:
                neighbours[item] = similar.items
        return Snapshot(
            personal=_decode(keys[0], raw_list, decode_rec_list),
            features=_decode(keys[1], raw_features, _json_object),
            trending=self._decoded_trending(keys[2], raw_trending),
            neighbours=neighbours,
        )

    async def category_trending(self, categories: list[str]) -> list[list[tuple[str, float]]]:
        """The trending lists of ``categories`` (empty for a category without one)."""
        if not categories:
            return []
        keys = [category_trending_key(self.prefix, c) for c in categories]
        values = await self.client.mget(keys)
        return [_decode(key, raw, _ranked) or [] for key, raw in zip(keys, values, strict=True)]

    async def product_category_trending(self, item_id: str) -> list[tuple[str, float]]:
        """The trending list of ``item_id``'s category; empty when either is unknown."""
        key_prefix = category_trending_key(self.prefix, "")
        keys = [item_categories_key(self.prefix)]
        raw = await self._product_script(keys=keys, args=[item_id, key_prefix])
        return _decode(f"{key_prefix}<category of {item_id}>", raw, _ranked) or []

    def _decoded_trending(self, key: str, raw: bytes | None) -> list[tuple[str, float]]:
        """The trending list of ``raw``, decoded only when the bytes changed."""
        if raw is None:
            return []
        if raw != self._trending_raw:
            self._trending = _decode(key, raw, _ranked) or []
            self._trending_raw = raw
        return self._trending

    async def features(self, user: str) -> dict[str, Any] | None:
        """The user's windowed features as the job wrote them; ``None`` when there are none."""
        key = features_key(self.prefix, user)
        return _decode(key, await self.client.get(key), _json_object)

    async def arm_counts(self, experiment: str) -> dict[str, ArmCounts]:
        """The experiment's cumulative counts by arm, as the job wrote them."""
        key = arms_key(self.prefix, experiment)
        raw = await cast("Awaitable[dict[bytes, bytes]]", self.client.hgetall(key))
        return decode_counts(raw)

    async def forget(self, user: str) -> int:
        """Delete the user's lists of every scene and features; the number of keys deleted."""
        keys = [rec_key(self.prefix, scene, user) for scene in SCENES]
        return int(await self.client.delete(*keys, features_key(self.prefix, user)))

    async def ping(self) -> bool:
        """Whether Redis answers ``PING``."""
        return bool(await self.client.ping())

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def _decode(key: str, raw: bytes | None, decode: Any) -> Any:
    if raw is None:
        return None
    try:
        return decode(raw)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring undecodable value of %s: %s", key, exc)
        return None


def _json_object(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _ranked(raw: bytes) -> list[tuple[str, float]]:
    return [(str(item), float(score)) for item, score in orjson.loads(raw)]


class CategoryCache:
    """Item categories from the job's item-category hash, cached in this process.

    State: at most ``max_items`` item -> category entries (unknown items are cached as ``""``),
    all dropped every ``ttl_s`` seconds and when full, so a re-filed item shows its new
    category within ``ttl_s``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        ttl_s: float = CATEGORY_CACHE_S,
        max_items: int = _CATEGORY_CACHE_MAX,
    ) -> None:
        self._client, self._key = client, key
        self.ttl_s, self.max_items = ttl_s, max_items
        self._known: dict[str, str] = {}
        self._since = time.monotonic()

    async def of(self, items: list[str]) -> dict[str, str]:
        """The known categories of ``items`` (items without one are left out)."""
        now = time.monotonic()
        if now - self._since >= self.ttl_s or len(self._known) >= self.max_items:
            self._known, self._since = {}, now
        missing = list(dict.fromkeys(i for i in items if i not in self._known))
        if missing:
            hmget = cast("Awaitable[list[bytes | None]]", self._client.hmget(self._key, missing))
            for item, raw in zip(missing, await hmget, strict=True):
                self._known[item] = raw.decode("utf-8", "replace") if raw else ""
        return {i: self._known[i] for i in items if self._known.get(i)}
