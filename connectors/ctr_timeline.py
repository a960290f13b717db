"""Click-through rate over time per arm: the counts behind the closed-loop plot and ratio.

An *arm* is whatever produced a served list (today the response's ``strategy``:
``online_mf`` or ``trending``). :class:`CtrTimeline` counts lists, impressions (items shown),
clicks, cart adds and purchases per arm in time buckets of ``bucket_s`` seconds since the
start of the run. State: one :class:`ArmCounts` per (bucket, arm) seen, so it grows by at most
one entry per arm per ``bucket_s`` of run time. A lock makes it safe to read while another
thread records (``flywheel run`` prints CTR while its traffic thread simulates).

:func:`plot_ctr` draws CTR per arm over time (and the lists served per arm) into a PNG;
:func:`ctr_ratio` divides two arms' CTRs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["ArmCounts", "CtrTimeline", "ctr_ratio", "plot_ctr"]


@dataclass
class ArmCounts:
    """Totals of one arm (in one bucket, or over a span of buckets)."""

    lists: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    relevant: int = 0  # items shown that suit the shopper (known to a simulator only)

    @property
    def ctr(self) -> float:
        """Clicks per impression; NaN without impressions."""
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def relevance(self) -> float:
        """Share of the items shown that suit the shopper; NaN without impressions."""
        return self.relevant / self.impressions if self.impressions else math.nan

    @property
    def conversion(self) -> float:
        """Purchases per impression; NaN without impressions."""
        return self.purchases / self.impressions if self.impressions else math.nan

    def add(self, other: ArmCounts) -> None:
        """Add ``other``'s counts to these."""
        self.lists += other.lists
        self.impressions += other.impressions
        self.clicks += other.clicks
        self.carts += other.carts
        self.purchases += other.purchases
        self.relevant += other.relevant


class CtrTimeline:
    """Per-arm counts in time buckets.

    >>> t = CtrTimeline(bucket_s=10)
    >>> t.record(3.0, "trending", ArmCounts(1, 10, 1))
    >>> t.record(14.0, "online_mf", ArmCounts(1, 10, 3))
    >>> t.totals()["online_mf"].ctr, t.totals(since_s=10)["trending"].ctr
    (0.3, nan)
    """

    def __init__(self, bucket_s: float = 10.0) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be > 0")
        self.bucket_s = bucket_s
        self._buckets: dict[int, dict[str, ArmCounts]] = {}
        self._lock = threading.RLock()

    def record(self, at_s: float, arm: str, counts: ArmCounts) -> None:
        """Count one served list (or several) of ``arm`` at ``at_s`` seconds into the run."""
        with self._lock:
            bucket = self._buckets.setdefault(int(at_s // self.bucket_s), {})
            bucket.setdefault(arm, ArmCounts()).add(counts)

    @property
    def arms(self) -> list[str]:
        """Every arm seen, sorted."""
        with self._lock:
            return sorted({arm for bucket in self._buckets.values() for arm in bucket})

    def series(self, arm: str) -> list[tuple[float, ArmCounts]]:
        """``(bucket start in s, counts)`` of ``arm``, for every bucket where it served."""
        with self._lock:
            return [
                (index * self.bucket_s, replace(arms[arm]))
                for index, arms in sorted(self._buckets.items())
                if arm in arms
            ]

    def trailing(self, arm: str, buckets: int) -> list[tuple[float, ArmCounts]]:
        """``(bucket end in s, counts of arm over the last ``buckets`` buckets)`` for every
        bucket from the first where ``arm`` served: a smoother series than :meth:`series`.

        >>> t = CtrTimeline(bucket_s=10)
        >>> for second in (1, 11, 21): t.record(second, "a", ArmCounts(1, 10, second // 10))
        >>> [(end, c.clicks) for end, c in t.trailing("a", 2)]
        [(10, 0), (20, 1), (30, 3)]
        """
        with self._lock:
            own = dict(self.series(arm))
            if not own:
                return []
            first, last = min(own), max(self._buckets) * self.bucket_s
        out, index = [], round(first / self.bucket_s)
        while index * self.bucket_s <= last:
            window = ArmCounts()
            for back in range(buckets):
                window.add(own.get((index - back) * self.bucket_s, ArmCounts()))
            out.append(((index + 1) * self.bucket_s, window))
            index += 1
        return out

    def totals(self, since_s: float = 0.0) -> dict[str, ArmCounts]:
        """Counts per arm over the buckets that start at or after ``since_s``."""
        with self._lock:
            out: dict[str, ArmCounts] = {arm: ArmCounts() for arm in self.arms}
            for index, arms in self._buckets.items():
                if index * self.bucket_s >= since_s:
                    for arm, counts in arms.items():
                        out[arm].add(counts)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: bucket width and, per arm, the bucket starts and counts."""
        return {
            "bucket_s": self.bucket_s,
            "arms": {
                arm: [{"start_s": start, **asdict(c)} for start, c in self.series(arm)]
                for arm in self.arms
            },
        }


def ctr_ratio(totals: Mapping[str, ArmCounts], arm: str, baseline: str) -> float:
    """CTR of ``arm`` / CTR of ``baseline``; NaN when either has no impressions or the
    baseline no clicks.

    >>> ctr_ratio({"a": ArmCounts(1, 10, 4), "b": ArmCounts(1, 10, 2)}, "a", "b")
    2.0
    >>> ctr_ratio({"a": ArmCounts(1, 10, 4)}, "a", "b")
    nan
    """
    mine, base = totals.get(arm), totals.get(baseline)
    if mine is None or base is None or not mine.impressions or not base.clicks:
        return math.nan
    return mine.ctr / base.ctr


def plot_ctr(
    timeline: CtrTimeline,
    path: Path,
    title: str,
    half_s: float | None = None,
    until_s: float | None = None,
    smooth: int = 6,
) -> bool:
    """CTR per arm over time as a PNG at ``path``: top, CTR over the trailing ``smooth``
    buckets (lines) and per bucket (dots); middle, the share of shown items that suit the
    shopper (when known); bottom, lists served per bucket.

    ``half_s`` marks where the second half (the span the ratio covers) starts; buckets ending
    after ``until_s`` (the last, incomplete one) are left out. Returns False, drawing nothing,
    when matplotlib is not importable.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(8, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.5, 1]}
    )
    width, end = timeline.bucket_s, math.inf if until_s is None else until_s
    for arm in timeline.arms:
        dots = [(s + width, c) for s, c in timeline.series(arm) if s + width <= end]
        lines = [(e, c) for e, c in timeline.trailing(arm, smooth) if e <= end]
        (line,) = top.plot([e for e, _ in lines], [c.ctr for _, c in lines], label=arm)
        colour = line.get_color()
        top.plot([e for e, _ in dots], [c.ctr for _, c in dots], ".", color=colour, alpha=0.35)
        middle.plot([e for e, _ in lines], [c.relevance for _, c in lines], color=colour)
        bottom.plot([e for e, _ in dots], [c.lists for _, c in dots], color=colour)
    for ax in (top, middle, bottom):
        if half_s is not None:
            ax.axvline(half_s, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
    if half_s is not None:
        top.annotate("second half →", (half_s, 0), xytext=(4, 4), textcoords="offset points")
    top.set_ylabel(f"CTR (line: last {smooth * width:g} s)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left")
    top.set_title(title)
    middle.set_ylabel("shown items\nin the tastes")
    middle.set_ylim(0, 1)
    bottom.set_ylabel(f"lists / {width:g} s")
    bottom.set_xlabel("seconds since the simulator started (end of bucket)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
