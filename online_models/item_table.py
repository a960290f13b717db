"""The item side of the factor model: one float32 row of factors and one bias per item.

State kept: ``ids`` (row -> item id), ``index`` (item id -> row), a float32 factor matrix and a
float32 bias vector. Rows are appended in first-seen order and never removed, so memory grows
with the number of distinct items: ``n_factors * 4 + ~100`` bytes per item, bounded by
``max_items`` (a full table refuses new items with :class:`CatalogueFull`). The matrix grows by
doubling, so adding an item is amortised O(n_factors).

Initial factors come from :class:`~online_models.initializers.KeyedNormal` (a River
initialiser keyed by the item id), so every replica of the table (one per Flink subtask)
initialises an item identically without coordination.
"""

from __future__ import annotations

import numpy as np

from online_models.initializers import KeyedNormal
from online_models.mf_kernel import add_rows

__all__ = ["CatalogueFull", "ItemTable"]

_INITIAL_CAPACITY = 1024


class CatalogueFull(RuntimeError):
    """The item table holds ``max_items`` items already."""


class ItemTable:
    """Item factors and biases in contiguous float32 arrays, addressable by item id.

    >>> table = ItemTable(n_factors=4, init_std=0.1, seed=1)
    >>> row = table.ensure("a")
    >>> table.factors[row].shape, len(table)
    ((4,), 1)
    """

    def __init__(self, n_factors: int, init_std: float, seed: int, max_items: int = 2_000_000):
        self.n_factors = n_factors
        self.init_std = init_std
        self.seed = seed
        self.max_items = max_items
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._factors = np.zeros((_INITIAL_CAPACITY, n_factors), dtype=np.float32)
        self._bias = np.zeros(_INITIAL_CAPACITY, dtype=np.float32)
        self._init = KeyedNormal(sigma=init_std, seed=seed)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def factors(self) -> np.ndarray:
        """View of the factor rows in use (n_items x n_factors); invalid after growth."""
        return self._factors[: len(self.ids)]

    @property
    def bias(self) -> np.ndarray:
        """View of the biases in use (n_items,)."""
        return self._bias[: len(self.ids)]

    def ensure(self, item: str) -> int:
        """Row of ``item``, adding it with its deterministic initial factors if new."""
        row = self.index.get(item)
        if row is not None:
            return row
        row = len(self.ids)
        if row >= self.max_items:
            raise CatalogueFull(f"item table is full ({self.max_items} items)")
        if row == self._factors.shape[0]:
            self._grow()
        self._factors[row] = self._init.draw(item, self.n_factors)
        self._bias[row] = 0.0
        self.ids.append(item)
        self.index[item] = row
        return row

    def apply_all(self, rows: np.ndarray, d_factors: np.ndarray, d_bias: np.ndarray) -> None:
        """Add deltas to ``rows`` in order; a row may repeat (a batch of many steps)."""
        add_rows(self._factors, self._bias, rows, d_factors, d_bias)

    def _grow(self) -> None:
        capacity = min(self._factors.shape[0] * 2, self.max_items)
        factors = np.zeros((capacity, self.n_factors), dtype=np.float32)
        bias = np.zeros(capacity, dtype=np.float32)
        factors[: len(self.ids)] = self.factors
        bias[: len(self.ids)] = self.bias
        self._factors, self._bias = factors, bias

    def nbytes(self) -> int:
        """Bytes held by the arrays (allocated capacity, not just rows in use)."""
        return int(self._factors.nbytes + self._bias.nbytes)
