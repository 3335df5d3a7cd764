"""The benchmark report: medians over rounds and speed-ups computed from them."""

from __future__ import annotations

import pytest

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


@pytest.mark.slow
def test_python_m_bench_runs_every_case(tmp_path):
    """Each case for one step on synthetic data: the benchmark cannot break without a test noticing (torch, when
    installed, adds its side). The end-to-end row is skipped: it times `all`, which
    `test_experiments.test_all_writes_its_outputs_reuses_the_teacher_and_extends` runs; so is resnet56's step, the
    resnet20 case's code with more blocks (`--skip-cases`)."""
    import json
    import os
    import subprocess
    import sys

    flags = ["--rounds", "1", "--windows", "1", "--steps", "1", "--skip-e2e", "--members", "2",
             "--skip-cases", "resnet56_ce", "--out", str(tmp_path)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-m", "bench", *flags], check=True, capture_output=True, text=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    figures = json.loads((tmp_path / "BENCH.json").read_text())["kdjax"]
    for case in (*CASES, "resnet20_ce", *(f"{case}_cached" for case in CACHED_CASES), "kd_cached_x2"):
        assert figures[case]["images_per_s"] > 0, case
    assert "e2e" not in figures and "resnet56_ce" not in figures
    assert "| teacher CE step (images/s) |" in (tmp_path / "BENCH.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("module, flags, expected", [
    # The engine's timed rows go through the offline rows' `engine_tokens_per_second` (two programs, not six).
    ("bench.lm", ["--memory", "16:128:float32", "--time", "16:128:float32", "--repeats", "1", "--engine", "2x16:128",
                  "--engine-time", "--offline", "2x16:128", "--offline-k", "8"],
     "| 1 device | 2 × 16 | 128 | gkd |"),
    ("bench.profile", ["--repeats", "1", "--networks", "student"], "## student: CE train step"),
])
def test_the_other_benchmarks_run_at_a_tiny_size(module, flags, expected, tmp_path):
    """`python -m bench.lm` (fused against unfused losses) and `python -m bench.profile` (a step against its floors),
    so that neither breaks without a test noticing."""
    import os
    import subprocess
    import sys

    out = tmp_path / "report.md"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", module, *flags, "--markdown" if module == "bench.lm" else "--out",
                           str(out)], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout and expected in out.read_text()


def test_the_streaming_benchmark_reads_a_folder_and_a_memory_map_at_a_tiny_size(tmp_path):
    """`python -m bench.stream`'s library calls: an image folder it writes, read through `StreamingLoader` (host and
    device) from its files and from the records it stores, and the memory probe over an `.npz` it writes and
    memory-maps."""
    from bench import stream

    stream.make_folder(tmp_path / "images", images=stream.BATCH + 1, classes=2)  # two batches, the second padded
    rates = stream.records_throughput(tmp_path / "images", tmp_path / "tfds", workers=0, batches=2)
    assert rates["store_seconds"] > 0 and rates["host"]["images_per_s"] > 0 and rates["device"]["images_per_s"] > 0
    figures = stream.memory(tmp_path / "big.npz", gigabytes=0.01, batches=3)
    assert figures["images"] == int(0.01e9) // (64 * 64 * 3) and figures["batches"] == 3
    assert figures["anon_rss_mb_max"] > 0 and figures["auto_choice"].startswith("resident")
