"""Decoded states kept between a key's events, so a state is not parsed again per event.

Used for users (:class:`DecodedStates`) and for items' neighbour counts
(:mod:`flink_jobs.item_neighbours`). Flink state stays the source of truth: every event
still reads the key's bytes from Flink and writes new bytes back. The cache only skips
*decoding* when the bytes read are exactly the bytes this operator wrote last for that key
(compared in full), so after a restore, a TTL expiry, a rescale or any write elsewhere the
state is decoded from Flink's bytes as before.

State kept: for at most ``capacity`` keys (least recently used first out), the last bytes
written and the decoded object that produced them. An entry is taken out while its key's
event is processed and put back only after the new bytes were written, so a failure
half-way through an event can never leave a mutated object behind an old byte string.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from flink_jobs.user_state import UserState, decode_state
from flywheel.settings import Settings

__all__ = ["DecodedCache", "DecodedStates"]

T = TypeVar("T")


class DecodedCache(Generic[T]):
    """Least-recently-used decoded values by key; ``decode(raw, settings)`` makes a value from
    Flink's bytes (``None``: no state yet)."""

    def __init__(self, decode: Callable[[bytes | None, Settings], T], capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.decode = decode
        self.capacity = capacity
        self.hits = 0
        self._entries: dict[str, tuple[bytes, T]] = {}

    def take(self, key: str, raw: bytes | None, settings: Settings) -> T:
        """The value encoded by ``raw``, reused when it is the one last put for ``key``."""
        entry = self._entries.pop(key, None)
        if entry is not None and raw is not None and entry[0] == raw:
            self.hits += 1
            return entry[1]
        return self.decode(raw, settings)

    def put(self, key: str, raw: bytes, value: T) -> None:
        """Remember that ``value`` is what ``raw`` (just written to Flink state) encodes."""
        if not self.capacity:
            return
        self._entries[key] = (raw, value)
        if len(self._entries) > self.capacity:
            del self._entries[next(iter(self._entries))]

    def drop(self, key: str) -> None:
        """Forget ``key`` (its Flink state was cleared)."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class DecodedStates(DecodedCache[UserState]):
    """Least-recently-used decoded states by user.

    >>> from flink_jobs.user_state import encode_state
    >>> settings = Settings()
    >>> cache = DecodedStates(capacity=2)
    >>> state = cache.take("u1", None, settings)
    >>> state.n_events += 1
    >>> raw = encode_state(state)
    >>> cache.put("u1", raw, state)
    >>> cache.take("u1", raw, settings) is state       # same bytes: the same object
    True
    >>> cache.put("u1", raw, state)
    >>> other = encode_state(decode_state(raw, settings))  # equal content, e.g. after a restore
    >>> cache.take("u1", other, settings) is state
    True
    >>> cache.put("u1", raw, state)
    >>> taken = cache.take("u1", raw, settings)
    >>> taken.n_events += 1                  # an event fails before its bytes are written ...
    >>> cache.take("u1", raw, settings).n_events   # ... so Flink's bytes are decoded again
    1
    """

    def __init__(self, capacity: int = 10_000) -> None:
        super().__init__(decode_state, capacity)
