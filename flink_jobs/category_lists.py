"""Per-category trending lists and the item-category map in Redis, written by the job.

Cold shoppers whose features name a category, and product pages without a neighbour list, are
served trending items of that category (:mod:`serving.recommend`); diversity caps per category
need each listed item's category. Both come from the job's windowed popularity
(:class:`online_models.popularity.WindowedPopularity`), which every subtask builds from the
same broadcast item deltas, so one subtask (index 0) writes them for all.

Keys (see :mod:`connectors.redis_lists`): ``{prefix}:trending:category:{category}`` (JSON
``[[item_id, score], ...]``, best first, with the lists' TTL; deleted when the category has no
item left in the window) and the hash ``{prefix}:item_categories`` (item id -> category; one
field per item ever filed, bounded by the catalogue).

State kept: the time of the last write (the changes to write are kept by the popularity
itself). Nothing here is checkpointed: after a restore, lists are rewritten as trending
refills.
"""

from __future__ import annotations

import orjson
import redis

from connectors.redis_lists import (
    ListWriter,
    category_trending_key,
    category_trending_suffix,
    item_categories_key,
)
from online_models.popularity import WindowedPopularity

__all__ = ["CategoryLists"]


class CategoryLists:
    """Writes the changed categories' trending lists every ``every_s`` seconds.

    Parameters
    ----------
    client, writer
        The job's Redis client (for deletes and the hash) and its list writer (SETs with TTL).
    every_s
        Seconds between two writes (each write covers only categories that changed).
    top_n
        Length of each category's list.
    """

    def __init__(self, client: redis.Redis, writer: ListWriter, every_s: float, top_n: int):
        self._redis, self._writer = client, writer
        self.every_s, self.top_n = every_s, top_n
        self._last = float("-inf")

    def maybe_write(self, popularity: WindowedPopularity, now_s: float) -> int:
        """Write what changed if ``every_s`` passed since the last write; the lists written."""
        if now_s - self._last < self.every_s:
            return 0
        self._last = now_s
        changed = popularity.take_changed_categories()
        entries, emptied = [], []
        for category in sorted(changed):
            ranked = popularity.top_in(category, self.top_n)
            if ranked:
                entries.append((category_trending_suffix(category), orjson.dumps(ranked)))
            else:
                emptied.append(category_trending_key(self._writer.prefix, category))
        filed = popularity.take_filed_items()
        self._writer.write_batch(entries)
        if emptied or filed:
            pipe = self._redis.pipeline(transaction=False)
            if emptied:
                pipe.delete(*emptied)
            if filed:
                pipe.hset(item_categories_key(self._writer.prefix), mapping=filed)
            pipe.execute()
        return len(entries)
