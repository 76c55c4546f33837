"""Replicas of one set-up and what they say: mean, spread, a confidence interval, and whether a
set-up is distinguishable from the best one.

A *set-up* is a job's overrides without its replica keys (see :mod:`segsweep.replicas`): the jobs
of ``segsweep-train -m model=unet,fpn seed=1,2,3`` form two set-ups of three replicas each.

The statistics, and why these:

- Standard deviation: the sample one (``ddof=1``), an unbiased variance from a handful of values.
- 95% confidence interval of the mean: Student's t with ``n - 1`` degrees of freedom. With 3-5
  replicas the variance is itself a rough estimate, and the normal quantile 1.96 would give an
  interval far too narrow (t's quantile for 2 degrees of freedom is 4.30).
- Tied with the best: Welch's t-test (unequal variances, as architectures and losses do differ in
  how much they move between seeds), two-sided at alpha = 0.05. Two-sided because the best set-up
  is picked after looking at the means: a one-sided test in the direction the data already chose
  would call a gap "significant" twice as often as its nominal level. No correction for
  comparing many set-ups with the best: a tie is what the flag protects, so erring towards "tied"
  is the cautious side. A bootstrap would say nothing with 3 replicas (10 distinct resamples).
- One replica: no spread, no interval, no test; the leaderboard says so instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
TIE_ALPHA = 0.05  # two-sided Welch's t-test: p >= TIE_ALPHA -> tied with the best


@dataclass(frozen=True)
class ReplicaStats:
    """Mean, sample standard deviation and the 95% t-interval of ``n`` replica values (``sd`` and
    the interval NaN for one replica)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


def replica_stats(values: Sequence[float]) -> ReplicaStats:
    """Statistics of one set-up's replica values (NaN values are the caller's to drop)."""
    from scipy import stats  # here: a report without replicas never needs scipy

    n = len(values)
    if n == 0:
        raise ValueError("replica_stats needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return ReplicaStats(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    # scipy's interval is NaN for a zero scale; identical replicas have a zero-width interval.
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) if sd > 0 else 0.0
    return ReplicaStats(n, mean, sd, mean - half, mean + half)


def welch_p_value(a: ReplicaStats, b: ReplicaStats) -> float:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean; NaN when either
    has a single replica (no variance to test with)."""
    from scipy import stats

    if a.n < 2 or b.n < 2:
        return math.nan
    if a.sd == 0 and b.sd == 0:  # scipy gives NaN: decide from the means themselves
        return 1.0 if a.mean == b.mean else 0.0
    return float(stats.ttest_ind_from_stats(a.mean, a.sd, a.n, b.mean, b.sd, b.n,
                                            equal_var=False).pvalue)


def tie_label(best: ReplicaStats, other: ReplicaStats, p_value: float) -> str:
    """What the leaderboard's ``tied with best`` column says about a set-up other than the best."""
    if math.isnan(p_value):
        return "untested (1 replica)" if min(best.n, other.n) < 2 else "untested"
    return "yes" if p_value >= TIE_ALPHA else "no"
