"""Mean and 95% confidence interval of a few seeds' results (Student's t, no SciPy on the box).

The benchmarks run each arm on 3–5 seeds; a normal interval would be too narrow at that count, so the
half-width uses t with n − 1 degrees of freedom. One value has no interval (its bounds are the value).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t by degrees of freedom; past 30 the normal's 1.96 is within 2%.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)


def t95(dof: int) -> float:
    if dof < 1:
        raise ValueError("an interval needs at least two values")
    if dof <= len(_T95):
        return _T95[dof - 1]
    return 2.042 if dof <= 30 else 1.96


@dataclass(frozen=True, slots=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` and its 95% t-interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, mean, mean, len(values))
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))
