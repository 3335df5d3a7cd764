"""kdjax's half of `python -m kdjax.bench`: step, eval and end-to-end figures as JSON."""

from __future__ import annotations

import itertools
import pathlib
import tempfile
import time

import jax

from kdjax.bench.common import (
    BATCH, CACHED_CASES, STEP_CASES, median_rate, run_side, steps_per_window, synthetic_split,
)
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, ResidentLoader, Split, load_cifar10
from kdjax.models import DeepNN, LightNN
from kdjax.teacher_cache import FIELD_FOR_OBJECTIVE, compute_teacher_cache
from kdjax.train import LossConfig, create_train_state, make_eval_step, make_train_step

OBJECTIVE = {"teacher_ce": "ce", "student_ce": "ce", "kd": "kd", "cosine": "cosine", "hint": "hint"}


def _batches(split: Split):
    loader = ResidentLoader(split, BATCH, jax.random.key(0))
    return itertools.chain.from_iterable(loader.epoch(epoch) for epoch in itertools.count())


def measure_steps(split: Split, windows: int) -> dict:
    teacher = create_train_state(DeepNN(), jax.random.key(1))
    cache = compute_teacher_cache(teacher.params, split, FIELD_FOR_OBJECTIVE.values())
    results = {}
    cases = [(case, False) for case in STEP_CASES] + [(case, True) for case in CACHED_CASES]
    for case, cached in cases:
        objective = OBJECTIVE[case]
        model = DeepNN() if case == "teacher_ce" else LightNN(hint=objective == "hint")
        state = create_train_state(model, jax.random.key(2))
        step = make_train_step(LossConfig(objective), cached=cached)
        teacher_arg = cache if cached else teacher.params
        batches = _batches(split)
        key = jax.random.key(3)
        start = time.perf_counter()
        compiled = step.lower(state, next(batches), key, teacher_arg).compile()
        compile_s = time.perf_counter() - start
        box = {"state": state}

        def window(n=steps_per_window(case)):
            for _ in range(n):
                box["state"], _ = compiled(box["state"], next(batches), key, teacher_arg)
            jax.block_until_ready(box["state"])

        window()  # warm-up: one full window, so each case starts from a settled machine
        name = f"{case}_cached" if cached else case
        results[name] = {"images_per_s": median_rate(window, steps_per_window(case) * BATCH, windows),
                         "compile_s": compile_s}
    return results


def measure_eval(split: Split, windows: int) -> dict:
    results = {}
    for name, model in (("teacher", DeepNN()), ("student", LightNN())):
        params = create_train_state(model, jax.random.key(0)).params
        eval_step = make_eval_step(model)
        batches = _batches(split)
        jax.block_until_ready(eval_step(params, next(batches)))

        def window():
            jax.block_until_ready([eval_step(params, next(batches)) for _ in range(10)])

        results[f"eval_{name}"] = {"images_per_s": median_rate(window, 10 * BATCH, windows)}
    return results


def measure_e2e(args) -> dict:
    from kdjax.experiments.common import run_all

    if args.data_dir:
        data = load_cifar10(args.data_dir).subset(args.e2e_train_size, args.e2e_test_size)
    else:
        data = Cifar10(Split(*synthetic_split(args.e2e_train_size, 0)), Split(*synthetic_split(args.e2e_test_size, 1)),
                       "synthetic", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        config = ExperimentConfig(name="all", epochs=args.e2e_epochs, checkpoint_dir=f"{tmp}/ck",
                                  output_dir=f"{tmp}/runs", save_every_steps=0)
        start = time.perf_counter()
        results = run_all(config, data, pathlib.Path(tmp) / "runs")
        seconds = time.perf_counter() - start
    return {"e2e": {"seconds": seconds, "accuracy": {r.name: r.test_accuracy for r in results}, "data": data.origin}}


def main() -> None:
    figures = {"versions": {"jax": jax.__version__}, "device": jax.devices()[0].device_kind}
    run_side(__doc__, figures, Split(*synthetic_split(2048, 0)), measure_steps, measure_eval, measure_e2e)


if __name__ == "__main__":
    main()
