"""A keyed River initialiser: the same key always gets the same initial factors.

River's :class:`~river.optim.initializers.Normal` draws from one random stream, so what an
item gets depends on the order items are first seen; building a seeded ``Normal`` per item
fixes that but costs a ``RandomState`` construction (tens of microseconds) per new item or
user. :class:`KeyedNormal` instead draws once, per process and seed, a table of
``TABLE_SIZE`` standard normals, and gives each key the slice starting at an offset derived
from a BLAKE2b hash of the key: about a microsecond per key, and identical in every process,
so every Flink subtask initialises an item the same way. Two keys whose offsets are closer
than the vector length get shifted copies of overlapping values, which is harmless for a
random starting point. Memory: ``TABLE_SIZE * 4`` bytes (16 MiB) per seed, shared.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from river.optim.base import Initializer

__all__ = ["TABLE_SIZE", "KeyedNormal"]

TABLE_SIZE = 1 << 22


@functools.lru_cache(maxsize=4)
def _table(seed: int) -> np.ndarray:
    table = np.random.default_rng(seed).standard_normal(TABLE_SIZE + 1024).astype(np.float32)
    table.flags.writeable = False
    return table


class KeyedNormal(Initializer):
    """Normal(``mu``, ``sigma``) weights determined by a key (at most 1024 per key).

    >>> init = KeyedNormal(sigma=0.1, seed=7)
    >>> a, b = init.draw("sku-1", 4), init.draw("sku-1", 4)
    >>> bool((a == b).all()), a.dtype, a.shape
    (True, dtype('float32'), (4,))
    >>> bool((init.draw("sku-2", 4) == a).all())
    False
    """

    def __init__(self, mu: float = 0.0, sigma: float = 1.0, seed: int = 0):
        self.mu = mu
        self.sigma = sigma
        self.seed = seed
        self._calls = 0

    def __call__(self, shape=1):
        """River's interface: unkeyed draws (keyed by the call count, still deterministic)."""
        self._calls += 1
        weights = self.draw(f"\x00call{self._calls}", int(shape))
        return float(weights[0]) if shape == 1 else weights

    def draw(self, key: str, n: int) -> np.ndarray:
        """``n`` float32 weights for ``key``."""
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        offset = int.from_bytes(digest, "little") % TABLE_SIZE
        values = _table(self.seed)[offset : offset + n] * np.float32(self.sigma)
        if self.mu:
            values += np.float32(self.mu)
        return values
