"""``flywheel ab-report``: per-arm CTR and conversion of an experiment, and whether they differ.

Reads the cumulative per-arm counts the job writes to Redis (``{prefix}:arms:{experiment}``,
:mod:`connectors.arm_counts`) and prints, per arm: impressions, clicks, CTR (clicks per
impression) with its 95 % Wilson interval, cart adds, purchases and conversion (purchases per
impression) with its interval. Each other arm is then compared with the control arm: the
difference in percentage points, the two-sided p-value of a two-proportion z-test and the
Bayesian probability that the arm beats the control (uniform priors), for CTR and conversion.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

import redis

from connectors.arm_counts import arms_key, read_counts
from flywheel.settings import Settings
from online_models.experiments import ArmCounts, prob_to_beat, wilson_interval, z_test

__all__ = ["render_report", "run"]


def run(
    settings: Settings,
    experiment: str | None = None,
    control: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print the report of ``experiment`` (default: the configured one); the exit status.

    Arms are shown in the configured experiment's order (its first arm is the default
    control), then any other arm found in Redis.
    """
    configured = settings.experiment_spec
    name = experiment or (configured.name if configured else None)
    if name is None:
        print("flywheel ab-report: give --experiment or set FLYWHEEL_EXPERIMENT", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(settings.redis_url)
    try:
        counts = read_counts(client, settings.redis_prefix, name)
    finally:
        client.close()
    if not counts:
        key = arms_key(settings.redis_prefix, name)
        print(f"flywheel ab-report: no counts in Redis under {key}", file=sys.stderr)
        return 1
    arms = list(configured.arms) if configured and configured.name == name else []
    arms += [arm for arm in counts if arm not in arms]
    control = control or arms[0]
    if control not in arms:
        print(f"flywheel ab-report: unknown control arm {control!r}", file=sys.stderr)
        return 2
    ordered = {arm: counts.get(arm, ArmCounts()) for arm in arms}
    print(render_report(name, ordered, control), file=out)
    return 0


def render_report(experiment: str, counts: Mapping[str, ArmCounts], control: str) -> str:
    """The report's text; ``counts`` in display order, ``control`` one of its arms.

    >>> print(render_report("e", {"a": ArmCounts(1000, 200, 9, 5),
    ...                           "b": ArmCounts(1000, 250, 9, 6)}, "a"))
    experiment e, control arm a
    arm  impressions  clicks  CTR [95% CI]              carts  purchases  conversion [95% CI]
    a          1,000     200  20.00% [17.64%, 22.59%]       9          5  0.50% [0.21%, 1.17%]
    b          1,000     250  25.00% [22.42%, 27.78%]       9          6  0.60% [0.28%, 1.30%]
    <BLANKLINE>
    vs control a
    arm   CTR diff   p-value  P(beats)  conv. diff   p-value  P(beats)
    b     +5.00 pp    0.0074     99.6%    +0.10 pp      0.76     61.3%
    """
    if control not in counts:
        raise ValueError(f"control arm {control!r} has no counts")
    width = max(3, *(len(arm) for arm in counts))
    lines = [
        f"experiment {experiment}, control arm {control}",
        f"{'arm':<{width}}  impressions  clicks  {'CTR [95% CI]':<24}  carts  purchases  "
        "conversion [95% CI]",
    ]
    for arm, c in counts.items():
        ctr = _rate(c.clicks, c.impressions)
        conversion = _rate(c.purchases, c.impressions)
        lines.append(
            f"{arm:<{width}}  {c.impressions:>11,}  {c.clicks:>6,}  {ctr:<24}  "
            f"{c.add_to_carts:>5,}  {c.purchases:>9,}  {conversion}"
        )
    base = counts[control]
    lines += [
        "",
        f"vs control {control}",
        f"{'arm':<{width}}  {'CTR diff':>9}  {'p-value':>8}  {'P(beats)':>8}  "
        f"{'conv. diff':>10}  {'p-value':>8}  {'P(beats)':>8}",
    ]
    for arm, c in counts.items():
        if arm != control:
            ctr = _compare(base.clicks, base.impressions, c.clicks, c.impressions, 9)
            conv = _compare(base.purchases, base.impressions, c.purchases, c.impressions, 10)
            lines.append(f"{arm:<{width}}  {ctr}  {conv}")
    return "\n".join(lines)


def _rate(successes: int, trials: int) -> str:
    if trials <= 0:
        return "-"
    low, high = wilson_interval(successes, trials)
    return f"{successes / trials:.2%} [{low:.2%}, {high:.2%}]"


def _compare(s_a: int, n_a: int, s_b: int, n_b: int, width: int) -> str:
    if n_a <= 0 or n_b <= 0:
        return f"{'-':>{width}}  {'-':>8}  {'-':>8}"
    test = z_test(s_a, n_a, s_b, n_b)
    p_value = "<1e-15" if test.p_value < 1e-15 else f"{test.p_value:.2g}"
    beat = prob_to_beat(s_a, n_a, s_b, n_b)
    return f"{test.diff * 100:>+{width - 3}.2f} pp  {p_value:>8}  {beat:>8.1%}"
