"""95% intervals for the rates an audit reports, without SciPy.

P-ASR after RA moves with the draw (which images the attacker retunes on, in which order),
so a verdict must not rest on one draw. With several RA seeds, every seed retunes the
method's model and the baseline on the same draw, and the gap's interval is Student's t
over the paired differences; with one seed, the only variation left to state is the test
set's, and the interval is Wilson's score interval for a rate and Newcombe's hybrid score
interval (his method 10) for the difference of two rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
# two-sided 95% quantiles of Student's t, by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
         40: 2.021, 60: 2.000, 120: 1.980}

METHOD = ("95% intervals: with plan.retune.seeds of 2 or more, Student's t over the seeds "
          "(the method and the baseline retuned on the same draw per seed, the gap's "
          "interval over the paired differences); with one seed, Wilson's score interval "
          "over the triggered test images, and Newcombe's hybrid score interval for the gap")


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df) if df < 120 else 120
    return _T975[below] if df < 120 else Z95


def wilson(rate: float, n: int) -> tuple[float, float]:
    """Wilson's score interval of a rate observed on `n` trials."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = Z95 * Z95
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student's t interval of the mean of `values` (two or more)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def rate_interval(runs: Sequence[float], n: int) -> tuple[float, float]:
    """The interval of a rate measured once per seed on `n` test images."""
    if len(runs) >= 2:
        lo, hi = mean_interval(runs)
        return (max(0.0, lo), min(1.0, hi))
    return wilson(runs[0], n)


def gap_interval(method: Sequence[float], baseline: Sequence[float], n_method: int,
                 n_baseline: int) -> tuple[float, float]:
    """The interval of mean(method) - mean(baseline): paired t over the seeds, or with one
    seed Newcombe's hybrid score interval from the two Wilson intervals."""
    if len(method) >= 2 and len(method) == len(baseline):
        return mean_interval([m - b for m, b in zip(method, baseline, strict=True)])
    p1, p2 = sum(method) / len(method), sum(baseline) / len(baseline)
    l1, u1 = wilson(p1, n_method * len(method))
    l2, u2 = wilson(p2, n_baseline * len(baseline))
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
