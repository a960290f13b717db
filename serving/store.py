"""The API's asynchronous view of Flywheel's Redis keys (layout: :mod:`connectors.redis_lists`).

One ``MGET`` per recommendation request reads the user's home list, the user's features and
the trending list together; one ``GET`` reads a user's features alone (the web page). Values
the job wrote are decoded here; an undecodable value is logged and treated as missing, so a
bad key degrades one answer to trending, never to an error. The bandit of an experiment reads
the per-arm counts with one ``HGETALL`` (at most once a second, :mod:`serving.assignment`).
The client's connection pool is the only state; it is closed by :meth:`RedisStore.close`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from connectors.arm_counts import arms_key, decode_counts
from connectors.redis_lists import (
    SCENES,
    decode_rec_list,
    features_key,
    rec_key,
    trending_key,
)
from flywheel.settings import Settings
from online_models.experiments import ArmCounts
from serving.recommend import Snapshot

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)


class RedisStore:
    """Reads snapshots and deletes a user's keys under ``settings.redis_prefix``.

    ``user`` arguments are pseudonyms, never raw ids.
    """

    def __init__(self, settings: Settings, timeout_s: float = 2.0) -> None:
        self.prefix = settings.redis_prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )

    async def snapshot(self, user: str) -> Snapshot:
        """The user's home list, features and the trending list, in one round trip."""
        keys = [
            rec_key(self.prefix, "home", user),
            features_key(self.prefix, user),
            trending_key(self.prefix),
        ]
        raw_list, raw_features, raw_trending = await self.client.mget(keys)
        return Snapshot(
            personal=_decode(keys[0], raw_list, decode_rec_list),
            features=_decode(keys[1], raw_features, _json_object),
            trending=_decode(keys[2], raw_trending, _ranked) or [],
        )

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
