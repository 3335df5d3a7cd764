"""Summaries of repeated runs: mean, spread and Student-t confidence intervals, plain and paired.

With a handful of seeds the normal approximation understates the interval, so both
intervals use Student's t with n - 1 degrees of freedom (`scipy.stats`, already a JAX
dependency). A paired comparison differences two methods seed by seed: runs with the same
seed share initial weights and batch order, which removes that part of the spread. When
several methods are each compared with one baseline, `holm_adjusted` corrects their p-values
for the number of comparisons (hand-written: scipy has no Holm, and it is a dozen lines).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class Summary:
    """n values: mean, sample standard deviation (ddof 1) and a two-sided confidence interval of the mean."""

    n: int
    mean: float
    std: float  # NaN when n < 2
    ci_low: float  # NaN when n < 2
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """`a - b` over matched pairs: the mean difference, its confidence interval and the paired t-test's p-value."""

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided; NaN when n < 2 or every difference is equal

    @property
    def verdict(self) -> str:
        """`better` / `worse` when the interval excludes 0, else `no clear difference`."""
        if self.ci_low > 0:
            return "better"
        if self.ci_high < 0:
            return "worse"
        return "no clear difference"


def _finite_values(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} needs a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} got non-finite values {array.tolist()}")
    return array


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    n = values.size
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarize(values: Sequence[float], *, confidence: float = 0.95) -> Summary:
    """Mean, std and the `confidence` t-interval of the mean of `values` (e.g. test accuracies over seeds)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = _finite_values(values, "summarize")
    mean, std, low, high = _t_interval(array, confidence)
    return Summary(array.size, mean, std, low, high)


def paired_comparison(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> PairedComparison:
    """Compare `a[i]` with `b[i]` (same seed i): mean of `a - b`, its t-interval, and the paired t-test."""
    a_values, b_values = _finite_values(a, "paired_comparison"), _finite_values(b, "paired_comparison")
    if a_values.shape != b_values.shape:
        raise ValueError(f"paired_comparison needs equally many values, got {a_values.size} and {b_values.size}")
    differences = a_values - b_values
    mean, std, low, high = _t_interval(differences, confidence)
    p_value = math.nan
    if differences.size >= 2 and std > 0:
        p_value = float(stats.ttest_rel(a_values, b_values).pvalue)
    return PairedComparison(differences.size, mean, low, high, p_value)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm 1979), in the order given.

    Comparing k methods with one baseline at 5 % each finds about 0.05 k "wins" by chance;
    rejecting where the adjusted p < 0.05 bounds the chance of any false win at 5 %.
    NaN entries (no test possible) stay NaN and are not counted in the family.
    """
    values = np.asarray(p_values, dtype=np.float64)
    tested = np.flatnonzero(~np.isnan(values))
    adjusted = np.full(values.shape, math.nan)
    order = tested[np.argsort(values[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()
