"""What both sides of the benchmark share: sizes, synthetic data, timing and the JSON hand-off."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any, Callable

import numpy as np

BATCH = 128
STEP_CASES = ("teacher_ce", "student_ce", "kd", "cosine", "hint")
CACHED_CASES = ("kd", "cosine", "hint")
TORCH_VARIANTS = ("eager", "channels_last", "compile")  # compile: torch.compile on the channels_last models
MEMBERS = 8  # the multi-member case: KD students with the teacher cache in one program
ZOO_BATCH = 64  # the distillation benchmarks' batch (RepDistiller, mdistiller)
ZOO_CASES = {"resnet20_ce": "resnet20", "resnet56_ce": "resnet56"}  # case -> zoo network, CE at ZOO_BATCH


def step_cases(skip: str) -> list[str]:
    """The per-step cases a side times (`STEP_CASES` then `ZOO_CASES`), less the comma-separated `skip`."""
    skipped = set(filter(None, skip.split(",")))
    return [case for case in (*STEP_CASES, *ZOO_CASES) if case not in skipped]


def batch_size(case: str) -> int:
    return ZOO_BATCH if case in ZOO_CASES else BATCH


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images and int32 labels; throughput does not depend on pixel values."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def median_rate(run_window: Callable[[], None], images_per_window: int, windows: int) -> float:
    """Median images/s over `windows` calls of `run_window` (each must block until its work is done)."""
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run_window()
        rates.append(images_per_window / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def side_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", required=True, help="where to write this side's figures")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per measurement")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed window (default: each case's own; 1 only checks that it runs)")
    parser.add_argument("--e2e-train-size", type=int, default=10_000)
    parser.add_argument("--e2e-test-size", type=int, default=2_000)
    parser.add_argument("--e2e-epochs", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="local CIFAR-10 copy for the end-to-end run (else synthetic)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--members", type=int, default=MEMBERS, help="KD students in the multi-member case")
    parser.add_argument("--skip-cases", default="", help="comma-separated step cases not to time")
    parser.add_argument("--variant", choices=TORCH_VARIANTS, default="eager",
                        help="PyTorch side only: the tutorial's code as written, in channels_last, or compiled")
    return parser


def steps_per_window(case: str) -> int:
    return {"teacher_ce": 3, "resnet56_ce": 3, "resnet20_ce": 8}.get(case, 30)


def run_side(description: str, figures: dict, data: Any, measure_steps: Callable, measure_eval: Callable,
             measure_e2e: Callable) -> None:
    """Parse a side's flags, take its measurements on `data` and write them, with peak memory, as JSON."""
    args = side_parser(description).parse_args()
    figures |= measure_steps(data, args)
    figures |= measure_eval(data, args)
    if not args.skip_e2e:
        figures |= measure_e2e(args)
    figures["peak_rss_mb"] = peak_rss_mb()
    with open(args.json, "w") as f:
        json.dump(figures, f, indent=2)
