"""The Redis key layout of Flywheel's derived data: top-N lists, user features, trending.

Keys (``prefix`` is ``settings.redis_prefix``, ``user`` is always the HMAC pseudonym):

- ``{prefix}:rec:{scene}:{user}`` -> a JSON string ``{"v":1,"user":<pseudonym>,"scene":..,
  "strategy":"online_mf"|"trending",...,"event_ts":ms,"written_ts":ms,
  "items":[[item_id, score], ...]}`` written with one SET (atomic replace) and TTL
  ``settings.list_ttl_s`` (0 = no TTL). Extra fields may appear where ``...`` stands.
- ``{prefix}:features:{user}`` -> JSON of that user's windowed features (written by the job;
  an opaque dict here).
- ``{prefix}:trending`` -> JSON list ``[[item_id, score], ...]``.
- ``{prefix}:trending:category:{category}`` -> the same for the items of one category (items
  carry the category of their latest event that named one), rewritten every
  ``settings.category_trending_s`` when it changed, deleted when the category has no item left
  in the trending window.
- ``{prefix}:item_categories`` -> a hash, item id -> category, for every item the job has seen
  with a category (per-category diversity caps read it).
- ``{prefix}:rec:product:{item}`` -> the item's neighbour list, JSON ``{"v":1,"item":<item id>,
  "scene":"product","strategy":"cooccurrence","event_ts":ms,"written_ts":ms,
  "items":[[item_id, score], ...]}`` (see :mod:`online_models.neighbours`), one SET with the
  same TTL as the lists. Item lists are aggregates over all users: no user id in them.

Redis holds derived data only: the event log on Kafka is the source of truth, and every value
is replaced whole by the job. :class:`ListWriter` (used by the job) batches SETs into one
pipeline round trip; :class:`ListReader` (used by frontends) reads one key per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

from flywheel.events import pseudonymise
from flywheel.settings import Settings

__all__ = [
    "ITEM_CATEGORIES_SUFFIX",
    "SCENES",
    "TRENDING_SUFFIX",
    "ItemList",
    "ListReader",
    "ListWriter",
    "RecList",
    "category_trending_key",
    "category_trending_suffix",
    "decode_item_list",
    "decode_rec_list",
    "encode_item_list",
    "encode_rec_list",
    "features_key",
    "features_suffix",
    "item_categories_key",
    "item_list_key",
    "item_list_suffix",
    "rec_key",
    "rec_suffix",
    "trending_key",
]

FORMAT_VERSION = 1
SCENES: tuple[str, ...] = ("home", "cart", "product")
"""Scenes a list may be stored for (deleting a user removes all of them)."""
TRENDING_SUFFIX = "trending"
ITEM_CATEGORIES_SUFFIX = "item_categories"


def rec_suffix(scene: str, user: str) -> str:
    """Key of a user's list in a scene, without the prefix (for :meth:`ListWriter.write_batch`).

    >>> rec_suffix("home", "ab12")
    'rec:home:ab12'
    """
    return f"rec:{scene}:{user}"


def features_suffix(user: str) -> str:
    """Key of a user's features, without the prefix."""
    return f"features:{user}"


def rec_key(prefix: str, scene: str, user: str) -> str:
    """Full key of a user's list: ``{prefix}:rec:{scene}:{user}``.

    >>> rec_key("fw", "home", "ab12")
    'fw:rec:home:ab12'
    """
    return f"{prefix}:{rec_suffix(scene, user)}"


def features_key(prefix: str, user: str) -> str:
    """Full key of a user's features: ``{prefix}:features:{user}``."""
    return f"{prefix}:{features_suffix(user)}"


def trending_key(prefix: str) -> str:
    """Full key of the trending list: ``{prefix}:trending``."""
    return f"{prefix}:{TRENDING_SUFFIX}"


def category_trending_suffix(category: str) -> str:
    """Key of one category's trending list, without the prefix.

    >>> category_trending_suffix("dairy")
    'trending:category:dairy'
    """
    return f"{TRENDING_SUFFIX}:category:{category}"


def category_trending_key(prefix: str, category: str) -> str:
    """Full key of one category's trending list: ``{prefix}:trending:category:{category}``."""
    return f"{prefix}:{category_trending_suffix(category)}"


def item_categories_key(prefix: str) -> str:
    """Full key of the item -> category hash: ``{prefix}:item_categories``."""
    return f"{prefix}:{ITEM_CATEGORIES_SUFFIX}"


def item_list_suffix(item: str) -> str:
    """Key of an item's neighbour list, without the prefix.

    >>> item_list_suffix("sku-7")
    'rec:product:sku-7'
    """
    return f"rec:product:{item}"


def item_list_key(prefix: str, item: str) -> str:
    """Full key of an item's neighbour list: ``{prefix}:rec:product:{item}``."""
    return f"{prefix}:{item_list_suffix(item)}"


@dataclass(frozen=True)
class RecList:
    """A user's top-N list as stored in Redis; ``user`` is the pseudonym."""

    user: str
    scene: str
    strategy: str
    event_ts: int
    written_ts: int
    items: list[tuple[str, float]]


def encode_rec_list(rec: RecList, **extra: Any) -> bytes:
    """The stored JSON of a list; ``extra`` adds fields (e.g. model version) to it.

    >>> encode_rec_list(RecList("ab", "home", "trending", 1, 2, [("i1", 0.5)]))
    b'{"v":1,"user":"ab","scene":"home","strategy":"trending","event_ts":1,"written_ts":2,"items":[["i1",0.5]]}'
    """
    head = {"v": FORMAT_VERSION, "user": rec.user, "scene": rec.scene, "strategy": rec.strategy}
    times = {"event_ts": rec.event_ts, "written_ts": rec.written_ts}
    return orjson.dumps({**head, **extra, **times, "items": rec.items})


def decode_rec_list(raw: bytes | str) -> RecList:
    """Parse a stored list (unknown extra fields are ignored).

    >>> rec = RecList("ab", "home", "trending", 1, 2, [("i1", 0.5)])
    >>> decode_rec_list(encode_rec_list(rec, model="v3")) == rec
    True
    """
    obj = orjson.loads(raw)
    items = [(str(item), float(score)) for item, score in obj["items"]]
    return RecList(
        obj["user"], obj["scene"], obj["strategy"], obj["event_ts"], obj["written_ts"], items
    )


@dataclass(frozen=True)
class ItemList:
    """An item's neighbour list as stored in Redis (``items`` best first)."""

    item: str
    strategy: str
    event_ts: int
    written_ts: int
    items: list[tuple[str, float]]


def encode_item_list(rec: ItemList) -> bytes:
    """The stored JSON of an item's neighbour list.

    >>> encode_item_list(ItemList("i1", "cooccurrence", 1, 2, [("i2", 0.5)]))
    b'{"v":1,"item":"i1","scene":"product","strategy":"cooccurrence","event_ts":1,"written_ts":2,"items":[["i2",0.5]]}'
    """
    head = {"v": FORMAT_VERSION, "item": rec.item, "scene": "product", "strategy": rec.strategy}
    times = {"event_ts": rec.event_ts, "written_ts": rec.written_ts}
    return orjson.dumps({**head, **times, "items": rec.items})


def decode_item_list(raw: bytes | str) -> ItemList:
    """Parse a stored neighbour list.

    >>> rec = ItemList("i1", "cooccurrence", 1, 2, [("i2", 0.5)])
    >>> decode_item_list(encode_item_list(rec)) == rec
    True
    """
    obj = orjson.loads(raw)
    items = [(str(item), float(score)) for item, score in obj["items"]]
    return ItemList(str(obj["item"]), obj["strategy"], obj["event_ts"], obj["written_ts"], items)


class ListWriter:
    """Writes values under ``{prefix}:`` in one pipeline round trip per batch.

    Parameters
    ----------
    redis_client
        A ``redis.Redis`` client (its connection pool is shared, not owned).
    prefix
        Key prefix, normally ``settings.redis_prefix``.
    ttl_s
        Expiry of every written key in seconds; 0 writes without a TTL.
    """

    def __init__(self, redis_client: redis.Redis, prefix: str, ttl_s: int) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        self._redis, self.prefix, self.ttl_s = redis_client, prefix, ttl_s

    def write_batch(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """SET each ``(key suffix, value)``, replacing whole values, in one round trip.

        The commands are packed here into one buffer (three times cheaper per key than a
        client pipeline, which matters at thousands of lists per second); a Redis error reply
        raises ``redis.ResponseError`` after every reply was read.
        """
        if not entries:
            return
        prefix = f"{self.prefix}:".encode()
        tail = b"" if not self.ttl_s else b"$2\r\nEX\r\n" + _bulk(str(self.ttl_s).encode())
        head = b"*5\r\n$3\r\nSET\r\n" if self.ttl_s else b"*3\r\n$3\r\nSET\r\n"
        buffer = b"".join(
            head + _bulk(prefix + suffix.encode()) + _bulk(value) + tail
            for suffix, value in entries
        )
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([buffer])
            errors = []
            for _ in entries:
                try:
                    connection.read_response()
                except redis.ResponseError as exc:
                    errors.append(exc)
        except BaseException:
            connection.disconnect()  # the stream may hold unread replies: never reuse it
            raise
        finally:
            pool.release(connection)
        if errors:
            raise errors[0]


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


class ListReader:
    """Reads lists, features and trending for frontends; one GET per call.

    Raw user ids are pseudonymised with ``settings.hmac_key`` before the lookup; pass
    ``pseudonymised=True`` when the caller already holds the pseudonym.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self._redis = client if client is not None else redis.Redis.from_url(settings.redis_url)
        self._owned = client is None
        self._prefix, self._hmac_key = settings.redis_prefix, settings.hmac_key

    def get(self, user_id: str, scene: str = "home", pseudonymised: bool = False) -> RecList | None:
        """The user's list in ``scene``, or ``None`` when there is none (yet, or expired)."""
        raw = self._get(rec_key(self._prefix, scene, self._user(user_id, pseudonymised)))
        return None if raw is None else decode_rec_list(raw)

    def features(self, user_id: str, pseudonymised: bool = False) -> dict[str, Any] | None:
        """The user's windowed features, or ``None``."""
        raw = self._get(features_key(self._prefix, self._user(user_id, pseudonymised)))
        return None if raw is None else dict(orjson.loads(raw))

    def similar(self, item: str) -> ItemList | None:
        """The item's neighbour list (product scene), or ``None`` when there is none."""
        raw = self._get(item_list_key(self._prefix, item))
        return None if raw is None else decode_item_list(raw)

    def trending(self) -> list[tuple[str, float]]:
        """The trending items, best first (empty when not written yet)."""
        raw = self._get(trending_key(self._prefix))
        return [] if raw is None else [(str(i), float(s)) for i, s in orjson.loads(raw)]

    def close(self) -> None:
        """Close the connection pool if this reader created it."""
        if self._owned:
            self._redis.close()

    def _get(self, key: str) -> bytes | None:
        return cast("bytes | None", self._redis.get(key))

    def _user(self, user_id: str, pseudonymised: bool) -> str:
        return user_id if pseudonymised else pseudonymise(user_id, self._hmac_key)
