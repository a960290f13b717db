"""Prequential (test-then-train) evaluation of a recommendation strategy on an event stream.

For each event in time order the evaluator first asks the strategy for the user's current
top-K list and records whether the event's item is in it (hit, 1-based rank), then lets the
strategy learn from the event. Metrics, each averaged over the scored events:

- ``hr@K``: share of events whose item is in the list;
- ``ndcg@K``: ``1 / log2(rank + 1)`` for a hit, 0 otherwise (one relevant item per event);
- ``mrr``: ``1 / rank`` for a hit, 0 otherwise (reciprocal rank cut at K);
- ``coverage``: distinct items recommended in the scored lists / distinct items seen.

**Micro-batches.** Asking for a list before every single event costs one scoring pass per
event. The stream is therefore processed in time-ordered micro-batches of ``batch`` events:
all lists of a batch come from the state before the batch (each distinct user is asked once,
so a matrix strategy does one matrix product per batch), then every event of the batch is
learnt in order. This mirrors the Flink job, whose coalesced refresh rewrites a dirty user's
list after a few hundred milliseconds rather than after each event, so an event may meet a
list that does not know the user's latest events yet. ``batch=1`` is exact test-then-train.

**Which events are scored.** Events whose action is in ``score_actions`` and whose timestamp
is at least ``score_from_ts`` (earlier events are only learnt: a warm-up, e.g. the slice used
for tuning). An event of a user without any earlier event is *cold*: it is tallied in the
``cold`` slice only, never in the overall figures. Scored events are also split by action and
into ``repeat`` (the user interacted with the item before, with any action) and
``first_time`` (a new (user, item) pair).

**Exclusion.** With ``exclude_seen`` the strategy is told to leave out the items each user has
interacted with before the batch (fashion-like catalogues); groceries keep it off, since
rebuying is legitimate, and then the ``first_time`` slice is the honest figure.

State kept during a run: the set of items each user interacted with (for the repeat split and
exclusion) and the set of items seen and recommended: O(distinct (user, item) pairs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from online_models.strategies import Strategy

__all__ = [
    "DEFAULT_SCORE_ACTIONS",
    "SPLITS",
    "Event",
    "Lister",
    "PrequentialReport",
    "Tally",
    "evaluate",
    "evaluate_variants",
    "events_from_dicts",
    "rank_in",
    "split_of",
]

DEFAULT_SCORE_ACTIONS = frozenset({"purchase", "add_to_cart", "click"})

Lister = Callable[[list[str], int, "list[set[str]] | None"], list[list[list[str]]]]
"""``(users, k, exclude) -> lists per variant``: the lists of several variants of one strategy
for the same users (e.g. one learnt model ranked several ways)."""
SPLITS = ("repeat", "first_time", "cold")
"""How a scored event is split: see :func:`split_of`."""


class Event(NamedTuple):
    """One interaction of the stream."""

    user: str
    item: str
    action: str
    ts: int


def events_from_dicts(events: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Events in the schema of :mod:`connectors.datasets` as a list of :class:`Event`.

    >>> events_from_dicts([{"user_id": "u", "item_id": "i", "action": "click", "ts": 5}])
    [Event(user='u', item='i', action='click', ts=5)]
    """
    return [Event(e["user_id"], e["item_id"], e["action"], int(e["ts"])) for e in events]


def rank_in(item: str, ranked: Sequence[str], k: int) -> int:
    """1-based rank of ``item`` among the first ``k`` of ``ranked``, 0 when it is not there.

    This and :func:`split_of` are the per-event test of both the offline evaluator and the
    streaming job (:mod:`online_models.live_quality`).

    >>> rank_in("b", ["a", "b", "c"], 3), rank_in("c", ["a", "b", "c"], 2)
    (2, 0)
    """
    top = ranked[:k]
    return top.index(item) + 1 if item in top else 0


def split_of(item: str, prior: Container[str] | None) -> str:
    """``cold`` when the user has no earlier event (``prior`` is None), ``repeat`` when
    ``item`` is among the items the user interacted with before, else ``first_time``.

    >>> split_of("a", None), split_of("a", {"a"}), split_of("b", {"a"})
    ('cold', 'repeat', 'first_time')
    """
    if prior is None:
        return "cold"
    return "repeat" if item in prior else "first_time"


@dataclass
class Tally:
    """Sums over the scored events of one slice.

    >>> t = Tally(); t.add(1); t.add(3); t.add(0)
    >>> t.n, round(t.hr, 3), round(t.ndcg, 3), round(t.mrr, 3)
    (3, 0.667, 0.5, 0.444)
    """

    n: int = 0
    hits: int = 0
    dcg: float = 0.0
    rr: float = 0.0

    def add(self, rank: int) -> None:
        """Count one event whose item had 1-based ``rank`` in the list (0: not in it)."""
        self.n += 1
        if rank:
            self.hits += 1
            self.dcg += 1.0 / math.log2(rank + 1)
            self.rr += 1.0 / rank

    @property
    def hr(self) -> float:
        """Hit rate (0 for an empty slice)."""
        return self.hits / self.n if self.n else 0.0

    @property
    def ndcg(self) -> float:
        """Mean NDCG with one relevant item per event."""
        return self.dcg / self.n if self.n else 0.0

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank, cut at K."""
        return self.rr / self.n if self.n else 0.0


@dataclass
class PrequentialReport:
    """What one prequential run measured; ``slices`` holds ``all``, ``cold``, ``repeat``,
    ``first_time`` and ``action:<name>``."""

    strategy: str
    k: int
    batch: int
    events: int = 0
    seconds: float = 0.0
    slices: dict[str, Tally] = field(default_factory=dict)
    items_seen: int = 0
    items_recommended: int = 0

    def slice(self, name: str) -> Tally:
        """The tally of a slice (created empty when new)."""
        return self.slices.setdefault(name, Tally())

    @property
    def coverage(self) -> float:
        """Distinct items recommended / distinct items seen."""
        return self.items_recommended / self.items_seen if self.items_seen else 0.0

    @property
    def events_per_s(self) -> float:
        """Events (learnt, scored or not) per second of the whole run."""
        return self.events / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat figures: ``hr@K``, ``ndcg@K``, ``mrr``, ``coverage``, ``scored``, the same per
        slice with a ``_<slice>`` suffix (``hr@10_first_time``), and ``events_per_s``."""
        k = self.k
        out: dict[str, float] = {}
        for name, t in sorted(self.slices.items()):
            suffix = "" if name == "all" else "_" + name.replace(":", "_")
            out[f"hr@{k}{suffix}"] = round(t.hr, 5)
            out[f"ndcg@{k}{suffix}"] = round(t.ndcg, 5)
            out[f"mrr{suffix}"] = round(t.mrr, 5)
            out[f"scored{suffix}"] = t.n
        out["coverage"] = round(self.coverage, 5)
        out["events_per_s"] = round(self.events_per_s, 1)
        return out


def evaluate(
    strategy: Strategy,
    events: Sequence[Event],
    k: int = 10,
    batch: int = 256,
    score_actions: Iterable[str] = DEFAULT_SCORE_ACTIONS,
    exclude_seen: bool = False,
    score_from_ts: int | None = None,
) -> PrequentialReport:
    """Prequential run of ``strategy`` over ``events`` (time-ordered) in micro-batches.

    >>> from online_models.strategies import PopularityStrategy
    >>> stream = [Event("a", "x", "purchase", 1), Event("b", "x", "purchase", 2),
    ...           Event("a", "y", "purchase", 3), Event("a", "x", "purchase", 4)]
    >>> report = evaluate(PopularityStrategy(), stream, k=1, batch=1)
    >>> report.slices["all"].n, report.slices["all"].hits, report.slices["cold"].hits
    (2, 1, 1)
    """

    def lister(users: list[str], n: int, exclude: list[set[str]] | None) -> list[list[list[str]]]:
        return [strategy.recommend(users, n, exclude)]

    return evaluate_variants(
        strategy, lister, [strategy.name], events, k, batch, score_actions, exclude_seen,
        score_from_ts,
    )[0]  # fmt: skip


def evaluate_variants(
    strategy: Strategy,
    lister: Lister,
    names: Sequence[str],
    events: Sequence[Event],
    k: int = 10,
    batch: int = 256,
    score_actions: Iterable[str] = DEFAULT_SCORE_ACTIONS,
    exclude_seen: bool = False,
    score_from_ts: int | None = None,
) -> list[PrequentialReport]:
    """:func:`evaluate` of several ranking variants of one learning ``strategy`` in one pass:
    ``lister`` gives each batch's lists of every variant (in ``names`` order), then the
    strategy learns the batch once. One report per variant."""
    if batch < 1 or k < 1:
        raise ValueError("batch and k must be >= 1")
    run = _Run(strategy, lister, names, k, frozenset(score_actions), exclude_seen, score_from_ts)
    start = time.perf_counter()
    for chunk in _chunks(events, batch):
        run.step(chunk)
    for report, recommended in zip(run.reports, run.recommended, strict=True):
        report.batch, report.events = batch, len(events)
        report.seconds = time.perf_counter() - start
        report.items_seen, report.items_recommended = len(run.items_seen), len(recommended)
    return run.reports


def _chunks(events: Sequence[Event], size: int) -> Iterator[Sequence[Event]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


class _Run:
    """The state of one evaluation: per-user history, seen and recommended items (per
    variant), tallies (per variant)."""

    def __init__(
        self,
        strategy: Strategy,
        lister: Lister,
        names: Sequence[str],
        k: int,
        score_actions: frozenset[str],
        exclude_seen: bool,
        score_from_ts: int | None,
    ):
        self.strategy, self.lister, self.k = strategy, lister, k
        self.score_actions, self.exclude_seen = score_actions, exclude_seen
        self.score_from_ts = score_from_ts
        self.reports = [PrequentialReport(name, k, 1) for name in names]
        self.history: dict[str, set[str]] = {}
        self.items_seen: set[str] = set()
        self.recommended: list[set[str]] = [set() for _ in names]

    def _scored(self, event: Event) -> bool:
        start = self.score_from_ts
        return event.action in self.score_actions and (start is None or event.ts >= start)

    def step(self, chunk: Sequence[Event]) -> None:
        """Lists from the state before ``chunk``, then score and learn its events in order."""
        scored = [self._scored(e) for e in chunk]
        variants = self._lists([e.user for e, s in zip(chunk, scored, strict=True) if s])
        for event, is_scored in zip(chunk, scored, strict=True):
            if is_scored:
                for report, lists in zip(self.reports, variants, strict=True):
                    self._score(report, event, lists[event.user])
            self.strategy.learn(event.user, event.item, event.action, event.ts)
            self.history.setdefault(event.user, set()).add(event.item)
            self.items_seen.add(event.item)

    def _lists(self, users: list[str]) -> list[dict[str, list[str]]]:
        distinct = list(dict.fromkeys(users))
        if not distinct:
            return [{} for _ in self.reports]
        exclude = None
        if self.exclude_seen:
            exclude = [set(self.history.get(u, ())) for u in distinct]
        out = []
        for ranked, recommended in zip(
            self.lister(distinct, self.k, exclude), self.recommended, strict=True
        ):
            for items in ranked:
                recommended.update(items[: self.k])
            out.append(dict(zip(distinct, ranked, strict=True)))
        return out

    def _score(self, report: PrequentialReport, event: Event, ranked: list[str]) -> None:
        rank = rank_in(event.item, ranked, self.k)
        split = split_of(event.item, self.history.get(event.user))
        report.slice(split).add(rank)
        if split != "cold":
            report.slice("all").add(rank)
            report.slice(f"action:{event.action}").add(rank)
