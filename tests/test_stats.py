"""Repeated-run statistics: t-intervals, the paired test and Holm's adjustment, against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kdjax.stats import holm_adjusted, paired_comparison, summarize


def test_summary_is_the_student_t_interval_of_the_mean():
    values = [69.1, 68.7, 69.9, 68.2, 69.4]
    s = summarize(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(np.mean(values)), pytest.approx(np.std(values, ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_paired_comparison_is_the_paired_t_test():
    a, b = [61.0, 62.5, 60.0, 61.2], [60.0, 61.0, 59.5, 61.4]
    c = paired_comparison(a, b)
    assert c.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c.mean_difference == pytest.approx(np.mean(np.subtract(a, b)))
    with pytest.raises(ValueError, match="equally many values, got 4 and 3"):
        paired_comparison(a, b[:3])


def test_holm_adjustment_closed_form():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == [1.0, 1.0]  # capped at 1


def test_holm_skips_untested_comparisons():
    adjusted = holm_adjusted([0.02, math.nan, 0.01])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


@pytest.mark.parametrize("seed", range(5))
def test_holm_rejects_what_the_step_down_procedure_rejects(seed):
    p = np.random.default_rng(seed).uniform(0, 0.08, size=8)
    alpha = 0.05
    rejected = set()  # Holm (1979): walk up the sorted p-values, stop at the first above alpha / (m - rank)
    for rank, index in enumerate(np.argsort(p)):
        if p[index] > alpha / (len(p) - rank):
            break
        rejected.add(int(index))
    assert {i for i, q in enumerate(holm_adjusted(p)) if q <= alpha} == rejected
