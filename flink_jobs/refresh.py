"""Coalesced, batched top-N refreshes of dirty users' lists.

State kept (:class:`RefreshQueue`, per subtask, in memory): one entry per user whose list is
due, holding a copy of what the refresh needs (factor vector, items to exclude, features, the
ingest times of the events it covers). A user appears at most once, so the queue is bounded
by the number of distinct users active within one coalescing interval. The queue is not
persisted: Flink's processing-time timers are, and a timer restored from a checkpoint (due
before this queue's first batch: :meth:`RefreshQueue.restored`) for a user missing from the
queue re-reads the user's state and refreshes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from connectors.redis_lists import RecList, encode_rec_list
from flink_jobs.batch_queue import BatchQueue
from flink_jobs.user_state import UserState, repeat_term
from flywheel.settings import Settings
from online_models.candidates import ClusteredIndex
from online_models.item_table import ItemTable
from online_models.rebuy_rates import ItemRebuyRates
from online_models.repeat_term import rank_with_repeats
from online_models.topn import top_n

__all__ = ["DirtyUser", "RefreshQueue", "build_lists", "make_index"]

_MISSING = -np.inf  # score of a row past a user's candidates (row -1)


@dataclass(slots=True)
class DirtyUser:
    """A user's state after their latest event (the job decodes a new state object per
    event, so holding this one is a snapshot), and the ingest times of the events it covers."""

    state: UserState
    event_ts: int
    ingest_ms: list[int] = field(default_factory=list)

    @property
    def vector(self) -> np.ndarray | None:
        return self.state.vector

    @property
    def n_events(self) -> int:
        return self.state.n_events

    def exclude(self, settings: Settings) -> list[str]:
        """Items never to recommend to this user."""
        return list(self.state.features.purchased) if settings.exclude_purchased else []

    def features(self) -> dict[str, object]:
        """The user's features as written to Redis."""
        return _features_view(self.state)


class RefreshQueue(BatchQueue[DirtyUser]):
    """Users waiting for a refresh; ``mark`` replaces a user's snapshot with a newer one.

    A batch opens when the first user is marked into an empty queue and is due
    ``coalesce_ms`` later (or at once when it holds ``max_users``): every user marked
    meanwhile joins it, so one matrix product serves them all and no user is refreshed more
    than once per interval (:class:`~flink_jobs.batch_queue.BatchQueue`).

    >>> q = RefreshQueue(coalesce_ms=250, max_users=2)
    >>> q.due_at is None, q.is_due(0), q.restored(0)
    (True, False, True)
    """

    def __init__(self, coalesce_ms: int = 250, max_users: int = 1024) -> None:
        super().__init__(coalesce_ms, max_users)

    def mark(self, user: str, state: UserState, settings: Settings, ingest_ms: int, ts: int) -> int:
        """Queue ``user`` with a snapshot of ``state``; returns when the batch is due (ms)."""
        due = self.open_batch(int(time.time() * 1000))
        previous = self.dirty.get(user)
        ingest = previous.ingest_ms if previous else []
        ingest.append(ingest_ms)
        self.dirty[user] = DirtyUser(state, ts, ingest)
        return due


def _features_view(state: UserState) -> dict[str, object]:
    f = state.features
    view: dict[str, object] = {
        "n_events": state.n_events,
        "max_ts": f.max_ts,
        "late": f.late,
        "windows": {f"{w}s": c for w, c in f.window_counts().items()},
        "totals": f.totals,
        "categories": f.categories,
        "recent": f.recent,
        "purchased": f.purchased,
        "cart": f.cart,
    }
    if f.repeats.entries:  # the repeat term's counts, as the refresh reads them
        names, counts = f.repeats.counts()
        view["repeats"] = {item: round(c, 4) for item, c in zip(names, counts, strict=True)}
    if state.vector is not None:
        view["factors"] = state.vector.tolist()
    return view


def make_index(settings: Settings) -> ClusteredIndex | None:
    """The clustered index the settings ask for (``None`` when retrieval is always exact)."""
    if settings.topn_index == "exact":
        return None
    return ClusteredIndex(
        n_probe=settings.ann_probe, refresh_s=settings.ann_refresh_s, seed=settings.seed
    )


def build_lists(
    batch: dict[str, DirtyUser],
    items: ItemTable,
    trending: list[tuple[str, float]],
    settings: Settings,
    index: ClusteredIndex | None = None,
    served: dict[str, list[tuple[str, float]]] | None = None,
    rebuys: ItemRebuyRates | None = None,
) -> list[tuple[str, str, bytes]]:
    """``(user, strategy, list JSON)`` for every user in ``batch``: one retrieval for all warm
    users (exact, or through ``index`` when the settings select it for this catalogue size),
    the repeat term added to each user's counted items (:func:`_ranked`; its rebuy part reads
    the items' rebuy rates ``rebuys``, none counted yet when ``None``); cold users (fewer
    than ``cold_user_events`` events) get ``trending``. When given,
    ``served`` receives each user's ranked ``(item, score)`` list (the live quality test)."""
    now = int(time.time() * 1000)
    warm = [
        u
        for u, d in batch.items()
        if d.vector is not None and d.n_events >= settings.cold_user_events
    ]
    out: list[tuple[str, str, bytes]] = []
    if warm and len(items):
        vectors = np.stack([batch[u].vector for u in warm])  # type: ignore[misc]
        exclude = [
            [items.index[i] for i in batch[u].exclude(settings) if i in items.index] for u in warm
        ]
        rows, scores = _ranked(batch, warm, vectors, items, exclude, settings, index, rebuys)
        item_of = items.ids.__getitem__  # rows and scores cross into Python once per batch
        all_rows, all_scores = rows.tolist(), np.round(scores, 5).tolist()
        for user, user_rows, user_scores in zip(warm, all_rows, all_scores, strict=True):
            ranked = _pairs(item_of, user_rows, user_scores)
            out.append((user, "online_mf", _encode(user, "online_mf", batch[user], ranked, now)))
            if served is not None:
                served[user] = ranked
    scored = set(warm) if len(items) else set()
    for user, dirty in batch.items():
        if user not in scored:
            seen = set(dirty.exclude(settings))
            ranked = [(i, s) for i, s in trending if i not in seen][: settings.top_n]
            out.append((user, "trending", _encode(user, "trending", dirty, ranked, now)))
            if served is not None:
                served[user] = ranked
    return out


def _pairs(
    item_of: Callable[[int], str], rows: list[int], scores: list[float]
) -> list[tuple[str, float]]:
    """``(item, score)`` of a user's ranked rows, without the rows past the user's candidates.

    >>> _pairs(["a", "b", "c"].__getitem__, [2, 0, -1], [0.5, 0.25, _MISSING])
    [('c', 0.5), ('a', 0.25)]
    """
    if scores and scores[-1] == _MISSING:  # rare: fewer candidates than top_n
        return [(item_of(r), s) for r, s in zip(rows, scores, strict=True) if s != _MISSING]
    return list(zip(map(item_of, rows), scores, strict=True))  # no per-pair Python frame


def uses_index(settings: Settings, n_items: int) -> bool:
    """Whether lists over ``n_items`` items come from the clustered index."""
    if settings.topn_index == "auto":
        return n_items >= settings.ann_min_items
    return settings.topn_index == "clustered"


def _ranked(
    batch: dict[str, DirtyUser],
    warm: list[str],
    vectors: np.ndarray,
    items: ItemTable,
    exclude: list[list[int]],
    settings: Settings,
    index: ClusteredIndex | None,
    rebuys: ItemRebuyRates | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each warm user's best rows and scores (B x top_n): the model score, plus the repeat
    term on the user's counted items when it is on (one retrieval for the batch either way)."""
    term = repeat_term(settings)
    if not term.active:
        return _retrieve(vectors, items, exclude, settings, index)
    if rebuys is None:  # no purchase counted yet: every item at the overall rate (logit 0)
        rebuys = ItemRebuyRates(1)
    counted = []
    lookup = items.index.get
    for user, skip in zip(warm, exclude, strict=True):
        names, values = term.values(batch[user].state.features.repeats, rebuys)
        found = np.fromiter(map(lookup, names, repeat(-1)), np.int64, len(names))
        keep = found >= 0  # items the table refused (full) cannot be listed
        if skip:
            keep &= ~np.isin(found, skip)
        counted.append((found[keep], values[keep]))
    return rank_with_repeats(
        vectors, items.factors, items.bias, counted, exclude, settings.top_n, term,
        lambda v, skip: _retrieve(v, items, skip, settings, index),
    )  # fmt: skip


def _retrieve(
    vectors: np.ndarray,
    items: ItemTable,
    exclude: list[list[int]],
    settings: Settings,
    index: ClusteredIndex | None,
) -> tuple[np.ndarray, np.ndarray]:
    if index is not None and uses_index(settings, len(items)):
        index.maybe_refresh(items.factors, items.bias, time.monotonic())
        return index.search(vectors, items.factors, items.bias, settings.top_n, exclude)
    return top_n(
        vectors, items.factors, items.bias, settings.top_n, exclude, threads=settings.blas_threads
    )


def _encode(
    user: str, strategy: str, dirty: DirtyUser, ranked: list[tuple[str, float]], now: int
) -> bytes:
    return encode_rec_list(RecList(user, "home", strategy, dirty.event_ts, now, ranked))
