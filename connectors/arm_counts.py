"""The Redis hash of an experiment's per-arm counts: key layout, increments and decoding.

Key ``{prefix}:arms:{experiment}`` is a hash with one integer field per arm and count:
``{arm}:impressions``, ``{arm}:clicks``, ``{arm}:add_to_carts``, ``{arm}:purchases``. The job
adds to it (``HINCRBY``, batched: one round trip per flush, see :func:`add_counts`); the API's
bandit and ``flywheel ab-report`` read it whole (``HGETALL``, :func:`decode_counts`). It has no
TTL: the counts are cumulative since the experiment started; ``DEL`` the key to start over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis

from online_models.experiments import ArmCounts

__all__ = ["COUNTS", "add_counts", "arms_key", "decode_counts", "read_counts"]

COUNTS: tuple[str, ...] = ("impressions", "clicks", "add_to_carts", "purchases")
"""The count fields of an arm, as named in the hash and in :class:`ArmCounts`."""
COUNT_OF_ACTION: dict[str, str] = {
    "impression": "impressions",
    "click": "clicks",
    "add_to_cart": "add_to_carts",
    "purchase": "purchases",
}


def arms_key(prefix: str, experiment: str) -> str:
    """Key of an experiment's per-arm counts.

    >>> arms_key("fw", "home-mf")
    'fw:arms:home-mf'
    """
    return f"{prefix}:arms:{experiment}"


def decode_counts(raw: Mapping[Any, Any]) -> dict[str, ArmCounts]:
    """Counts by arm from an ``HGETALL`` reply; unknown fields and bad values are ignored.

    >>> decode_counts({b"a:impressions": b"10", b"a:clicks": b"2", b"junk": b"1"})
    {'a': ArmCounts(impressions=10, clicks=2, add_to_carts=0, purchases=0)}
    """
    fields: dict[str, dict[str, int]] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        arm, _, count = name.rpartition(":")
        if not arm or count not in COUNTS:
            continue
        try:
            fields.setdefault(arm, {})[count] = int(value)
        except ValueError:
            continue
    return {arm: ArmCounts(**values) for arm, values in sorted(fields.items())}


def add_counts(client: redis.Redis, prefix: str, increments: Mapping[tuple[str, str], int]) -> None:
    """``HINCRBY`` every ``(experiment, "{arm}:{count}") -> n`` in one pipeline round trip."""
    if not increments:
        return
    pipe = client.pipeline(transaction=False)
    for (experiment, field), n in increments.items():
        pipe.hincrby(arms_key(prefix, experiment), field, n)
    pipe.execute()


def read_counts(client: redis.Redis, prefix: str, experiment: str) -> dict[str, ArmCounts]:
    """The experiment's counts by arm (empty when nothing was counted yet)."""
    return decode_counts(cast("dict[bytes, bytes]", client.hgetall(arms_key(prefix, experiment))))
