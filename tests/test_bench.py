"""The benchmark report: medians over rounds and speed-ups computed from them."""

from __future__ import annotations

from bench.__main__ import merge_rounds, table
from bench.common import CACHED_CASES, STEP_CASES

CASES = (*STEP_CASES, "eval_teacher", "eval_student")


def _side(rate: float, memory: float, cached: bool) -> dict:
    figures = {case: {"images_per_s": rate} for case in CASES}
    if cached:
        figures |= {f"{case}_cached": {"images_per_s": 10 * rate, "compile_s": 1.5} for case in CACHED_CASES}
    return figures | {"peak_rss_mb": memory}


def test_rounds_merge_to_medians_and_per_round_speed_ups():
    kdjax = merge_rounds([_side(r, m, True) for r, m in ((100, 900), (300, 1000), (200, 950))])
    torch = merge_rounds([_side(r, 800, False) for r in (100, 100, 400)])
    assert kdjax["teacher_ce"]["images_per_s"] == 200 and kdjax["teacher_ce"]["rounds"] == [100, 300, 200]
    assert kdjax["peak_rss_mb"] == 1000
    report = table(kdjax, torch)
    assert "| teacher CE step (images/s) | 200 | 100 | 2.00x | 1.00 / 3.00 / 0.50 |" in report
    assert "| student KD step, teacher cache (images/s) | 2,000 | 100 | 20.00x | 10.00 / 30.00 / 5.00 |" in report
    assert "| peak host memory (MB) | 1,000 | 800 | | |" in report


def test_a_single_round_lists_no_per_round_column_values():
    report = table(merge_rounds([_side(50, 500, True)]), None)
    assert "| teacher CE step (images/s) | 50 | n/a | n/a |  |" in report
