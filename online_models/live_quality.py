"""Prequential quality of the lists a streaming job serves, measured as events arrive.

The offline evaluator (:mod:`online_models.evaluation`) asks a strategy for a user's top-K
list just before learning each event. A running job has no such question to ask: the lists
are what it wrote to the store. :class:`LiveQuality` therefore remembers the lists as they
are written and tests each scored event against them before the job learns from it, with
the same per-event code as the offline evaluator (:func:`~online_models.evaluation.rank_in`,
:func:`~online_models.evaluation.split_of`, :class:`~online_models.evaluation.Tally`).

Strategies tested, for every scored event:

- ``online_mf``: the user's own list as last written (the personal ranking, or the trending
  fallback a user below the cold-start threshold gets, as the offline ``OnlineMFStrategy``
  answers users it cannot rank);
- ``popularity``: the global trending list as last written (every event can meet it).

An event whose list is not known or empty (the user's list was never written since this
tracker started, e.g. after a restore, or was evicted; trending is empty until the first
events are counted) is counted in ``unscored``, never as a miss.

State kept, and its bounds:

- :class:`ServedLists`: the top-K item ids of at most ``users_max`` users (least recently
  written out first): one tuple of K references per user (the id strings are the ones the
  lists were built from);
- the trending top-K;
- per (strategy, split) a :class:`~online_models.evaluation.Tally` of the events scored since
  the last :meth:`LiveQuality.drain` (six small objects);
- :class:`CoverageWindow` per strategy: each item recommended in the trailing window with the
  time it was last recommended, so at most ``min(catalogue, K x lists written in the
  window)`` entries; it may be shared by the trackers of one process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Sequence

from online_models.evaluation import SPLITS, Tally, rank_in, split_of

__all__ = ["PERSONAL", "POPULARITY", "STRATEGIES", "CoverageWindow", "LiveQuality", "ServedLists"]

PERSONAL = "online_mf"
POPULARITY = "popularity"
STRATEGIES = (PERSONAL, POPULARITY)
"""The ``strategy`` values live quality is reported for (names of the offline benchmark)."""


class ServedLists:
    """The top-K item ids last written for each of at most ``users_max`` users.

    >>> lists = ServedLists(users_max=2)
    >>> lists.put("u1", ("a", "b")); lists.put("u2", ("c",)); lists.put("u3", ("d",))
    >>> lists.get("u1") is None, lists.get("u3"), len(lists)
    (True, ('d',), 2)
    """

    def __init__(self, users_max: int) -> None:
        if users_max < 0:
            raise ValueError("users_max must be >= 0")
        self.users_max = users_max
        self._lists: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def put(self, user: str, items: tuple[str, ...]) -> None:
        """Remember ``items`` as ``user``'s list (the least recently written user goes first
        when the bound is reached)."""
        if not self.users_max:
            return
        self._lists[user] = items
        self._lists.move_to_end(user)
        if len(self._lists) > self.users_max:
            self._lists.popitem(last=False)

    def get(self, user: str) -> tuple[str, ...] | None:
        """``user``'s last list, ``None`` when unknown."""
        return self._lists.get(user)

    def drop(self, user: str) -> None:
        """Forget ``user``."""
        self._lists.pop(user, None)

    def __len__(self) -> int:
        return len(self._lists)


class CoverageWindow:
    """Distinct items recommended within the last ``window_s`` seconds (thread-safe, so the
    trackers of several operators in one process can share one window).

    >>> window = CoverageWindow(window_s=60)
    >>> window.add(("a", "b"), now_s=0); window.add(("b", "c"), now_s=30)
    >>> window.distinct(now_s=59), window.distinct(now_s=61)
    (3, 2)
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._last: OrderedDict[str, float] = OrderedDict()  # oldest recommendation first
        self._lock = threading.Lock()

    def add(self, items: Iterable[str], now_s: float) -> None:
        """Record that ``items`` were recommended at ``now_s``."""
        with self._lock:
            last = self._last
            for item in items:
                last[item] = now_s
                last.move_to_end(item)

    def distinct(self, now_s: float) -> int:
        """Items recommended in ``(now_s - window_s, now_s]``; drops older ones."""
        with self._lock:
            last, lower = self._last, now_s - self.window_s
            while last and next(iter(last.values())) <= lower:
                last.popitem(last=False)
            return len(last)


class LiveQuality:
    """Tests events against the lists served so far, per strategy and split.

    >>> quality = LiveQuality(k=2, users_max=100)
    >>> quality.personal("u", ["a", "b", "c"], now_s=0)
    >>> quality.trending(["c", "a"], now_s=0)
    >>> quality.test("u", "b", prior={"x"})        # rank 2 in u's list, not in trending
    >>> quality.test("v", "c", prior=None)         # v has no list; c tops trending
    >>> tallies, unscored = quality.drain()
    >>> tallies[("online_mf", "first_time")].hits, tallies[("popularity", "cold")].hits
    (1, 1)
    >>> unscored
    {'online_mf': 1, 'popularity': 0}
    >>> quality.drain()[0][("online_mf", "first_time")].n   # drained: counts start again
    0
    """

    def __init__(
        self,
        k: int,
        users_max: int,
        coverage: dict[str, CoverageWindow] | None = None,
    ) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.lists = ServedLists(users_max)
        self.coverage = coverage if coverage is not None else {}
        self._trending: tuple[str, ...] | None = None
        self._tallies = _empty_tallies()
        self._unscored = dict.fromkeys(STRATEGIES, 0)

    def personal(self, user: str, ranked: Sequence[str], now_s: float) -> None:
        """``ranked`` (best first) was just written as ``user``'s list."""
        top = tuple(ranked[: self.k])
        self.lists.put(user, top)
        self._covered(PERSONAL, top, now_s)

    def trending(self, ranked: Sequence[str], now_s: float) -> None:
        """``ranked`` (best first) was just written as the trending list."""
        self._trending = tuple(ranked[: self.k])
        self._covered(POPULARITY, self._trending, now_s)

    def forget(self, user: str) -> None:
        """Drop ``user``'s list (the user was erased)."""
        self.lists.drop(user)

    def test(self, user: str, item: str, prior: Container[str] | None) -> None:
        """Score one event of ``user`` on ``item`` against the lists served so far; ``prior``
        holds the items the user interacted with before (``None``: no earlier event)."""
        split = split_of(item, prior)
        self._score(PERSONAL, split, item, self.lists.get(user))
        self._score(POPULARITY, split, item, self._trending)

    def _score(self, strategy: str, split: str, item: str, top: tuple[str, ...] | None) -> None:
        if top:
            self._tallies[(strategy, split)].add(rank_in(item, top, self.k))
        else:  # never written, evicted, or empty: nothing was served to test
            self._unscored[strategy] += 1

    def drain(self) -> tuple[dict[tuple[str, str], Tally], dict[str, int]]:
        """The tallies per ``(strategy, split)`` and the unscored events per strategy since
        the last call; counting starts again from zero."""
        tallies, unscored = self._tallies, self._unscored
        self._tallies, self._unscored = _empty_tallies(), dict.fromkeys(STRATEGIES, 0)
        return tallies, unscored

    def _covered(self, strategy: str, top: tuple[str, ...], now_s: float) -> None:
        window = self.coverage.get(strategy)
        if window is not None:
            window.add(top, now_s)


def _empty_tallies() -> dict[tuple[str, str], Tally]:
    return {(strategy, split): Tally() for strategy in STRATEGIES for split in SPLITS}
