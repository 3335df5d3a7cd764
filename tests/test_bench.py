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


def test_rounds_merge_to_medians_and_speed_ups_over_each_variant_and_the_fastest():
    kdjax = merge_rounds([_side(r, m, True) for r, m in ((100, 900), (300, 1000), (200, 950))])
    eager = merge_rounds([_side(r, 800, False) for r in (100, 100, 400)])
    channels_last = merge_rounds([_side(r, 700, False) for r in (150, 250, 250)])
    assert kdjax["teacher_ce"]["images_per_s"] == 200 and kdjax["teacher_ce"]["rounds"] == [100, 300, 200]
    assert kdjax["peak_rss_mb"] == 1000
    report = table(kdjax, {"eager": eager, "channels_last": channels_last})
    assert "| measurement | kdjax | PyTorch eager | PyTorch channels_last | vs eager | vs channels_last | " \
           "vs fastest PyTorch |" in report
    assert "| teacher CE step (images/s) | 200 | 100 | 250 | 2.00x | 0.80x | 0.80x |" in report
    assert "| student KD step, teacher cache (images/s) | 2,000 | 100 | 250 | 20.00x | 8.00x | 8.00x |" in report
    assert "teacher CE step eager: 1.00 / 3.00 / 0.50" in report
    assert "teacher CE step channels_last: 0.67 / 1.20 / 0.80" in report
    assert "Peak host memory (MB): kdjax 1,000, PyTorch eager 800, PyTorch channels_last 700." in report


def test_without_pytorch_only_kdjax_is_listed():
    report = table(merge_rounds([_side(50, 500, True)]), {})
    assert "| teacher CE step (images/s) | 50 |" in report
    assert "vs" not in report and "per round" not in report
