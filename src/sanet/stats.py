"""The statistics the comparisons report: mean ± sample std, and the 95 % t-interval with its
t-test p-value (one definition; ``sanet compare`` and the learning studies use it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Below this sample standard deviation the differences count as equal (float noise): no t-test.
ZERO_SPREAD = 1e-12


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``mean``, sample ``std``, the 95 % t-interval ``ci95`` of the mean and the
    one-sample t-test ``p_value`` (H0: mean 0). With fewer than two values the spread, interval
    and p-value are ``None``; with no spread the p-value is."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return {
            "n": n,
            "mean": sum(values) / n if n else None,
            "std": None,
            "ci95": None,
            "p_value": None,
        }
    mean, sd = mean_std(values)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(list(values), 0.0).pvalue) if sd > ZERO_SPREAD else None
    return {"n": n, "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "p_value": p}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``b − a`` pair by pair: :func:`t_interval` of the differences (the paired t-test)."""
    return t_interval([y - x for x, y in zip(a, b, strict=True)])
