"""kdjax's half of `python -m bench`: step, eval and end-to-end figures as JSON."""

from __future__ import annotations

import functools
import itertools
import tempfile
import time

import jax
import numpy as np

from bench.common import (
    BATCH,
    CACHED_CASES,
    ZOO_CASES,
    batch_size,
    median_rate,
    run_side,
    step_cases,
    steps_per_window,
    synthetic_split,
)
from kdjax import methods, zoo
from kdjax.config import ExperimentConfig
from kdjax.cpu import use_fast_cpu_kernels
from kdjax.data import Dataset, ResidentLoader, Split, epoch_order, load_cifar10
from kdjax.engine import (
    Member,
    ProgramSpec,
    init_states,
    model_variables,
    program_step,
    stack_hyperparameters,
)
from kdjax.parallel import batch_mesh
from kdjax.teacher import Teacher, cache_outputs
from kdjax.train import Settings, build_objective
from kdjax.train import eval_step as eval_step_fn
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher

OBJECTIVE = {"teacher_ce": "ce", "student_ce": "ce", "kd": "kd", "cosine": "cosine", "hint": "hint"}


def engine_program(case: str, split: Split, teacher_params, cached: bool, members: int = 1):
    """The engine's jitted step for `members` members of `case`, its initial states and its other arguments."""
    teacher, batch = tutorial_teacher(), batch_size(case)
    if case in ZOO_CASES:
        network = zoo.network(ZOO_CASES[case])
    else:
        network = teacher if case == "teacher_ce" else tutorial_student()
    method = methods.get(OBJECTIVE.get(case, "ce"))
    objective = build_objective(method, network, teacher if method.needs_teacher else None)
    spec = ProgramSpec(objective, batch, len(split), "none", True, batch_mesh(1))
    step = jax.jit(functools.partial(program_step, spec=spec), donate_argnums=(0,))
    seeds = list(range(members))
    teacher_arg = None
    if method.needs_teacher:
        live = Teacher(teacher, *teacher_params)
        teacher_arg = cache_outputs(live, split, method.reads) if cached else live
    keys = jax.numpy.stack([jax.random.key(seed) for seed in seeds])
    orders = jax.numpy.stack([epoch_order(key, 0, len(split), batch) for key in keys])
    member_list = [Member.of(method.name, seed) for seed in seeds]
    rest = (orders, np.int32(0), split.arrays(), teacher_arg, keys, keys, stack_hyperparameters(member_list))
    # On the device once, as the training loop puts them: a host array would be copied in every step.
    return step, init_states(objective, seeds, 1e-3), jax.device_put(rest)


def _time_case(step, states, rest, steps: int, images: int, windows: int, batch: int = BATCH) -> dict:
    """Compile time and steady images/s of `step`, `images` per step, over orders of `batch`-image batches."""
    orders, epoch, data, teacher_arg, data_keys, dropout_keys, hp = rest
    batches = orders.shape[1] // batch
    start = time.perf_counter()
    compiled = step.lower(states, orders, epoch, np.int32(0), data, teacher_arg, data_keys, dropout_keys,
                          hp).compile()
    compile_s = time.perf_counter() - start
    box = {"state": states, "index": 0}

    def window():
        for _ in range(steps):
            box["index"] = (box["index"] + 1) % batches
            box["state"], _ = compiled(box["state"], orders, epoch, np.int32(box["index"]), data, teacher_arg,
                                       data_keys, dropout_keys, hp)
        jax.block_until_ready(box["state"])

    window()  # warm-up: one full window, so each case starts from a settled machine
    return {"images_per_s": median_rate(window, steps * images, windows), "compile_s": compile_s}


def measure_steps(split: Split, args) -> dict:
    windows = args.windows
    teacher_params = model_variables(init_states(build_objective(methods.get("ce"), tutorial_teacher()), [1], 1e-3))
    results = {}
    cases = [(case, False) for case in step_cases(args.skip_cases)] + [(case, True) for case in CACHED_CASES]
    for case, cached in cases:
        step, states, rest = engine_program(case, split, teacher_params, cached)
        name = f"{case}_cached" if cached else case
        batch = batch_size(case)
        results[name] = _time_case(step, states, rest, args.steps or steps_per_window(case), batch, windows, batch)
    step, states, rest = engine_program("kd", split, teacher_params, True, members=args.members)
    results[f"kd_cached_x{args.members}"] = _time_case(step, states, rest, args.steps or steps_per_window("kd") // 2,
                                                       args.members * BATCH, windows)
    return results


def _batches(split: Split):
    loader = ResidentLoader(split, BATCH, jax.random.key(0))
    return itertools.chain.from_iterable(loader.epoch(epoch) for epoch in itertools.count())


def measure_eval(split: Split, args) -> dict:
    windows = args.windows
    results = {}
    for name, network in (("teacher", tutorial_teacher()), ("student", tutorial_student())):
        params, state = network.init(jax.random.key(0))
        eval_step = jax.jit(functools.partial(eval_step_fn, network=network))
        batches = _batches(split)
        jax.block_until_ready(eval_step(params, state, next(batches)))

        steps = args.steps or 10

        def window():
            jax.block_until_ready([eval_step(params, state, next(batches)) for _ in range(steps)])

        results[f"eval_{name}"] = {"images_per_s": median_rate(window, steps * BATCH, windows)}
    return results


def measure_e2e(args) -> dict:
    from kdjax.run import train_and_evaluate

    if args.data_dir:
        data = load_cifar10(args.data_dir).subset(args.e2e_train_size, args.e2e_test_size)
    else:
        data = Dataset(Split(*synthetic_split(args.e2e_train_size, 0)), Split(*synthetic_split(args.e2e_test_size, 1)),
                       "synthetic", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        config = ExperimentConfig(name="all", training=Settings(epochs=args.e2e_epochs, save_every_steps=0),
                                  checkpoint_dir=f"{tmp}/ck", output_dir=f"{tmp}/runs")
        start = time.perf_counter()
        result = train_and_evaluate(config, data)
        seconds = time.perf_counter() - start
    teacher, students = result.teacher, result.students
    accuracy = {("teacher" if r.network == "DeepNN" else r.member.name): r.test_accuracy for r in teacher + students}
    return {"e2e": {"seconds": seconds, "accuracy": accuracy, "data": data.origin}}


def main() -> None:
    use_fast_cpu_kernels()  # before JAX starts its backends
    figures = {"versions": {"jax": jax.__version__}, "device": jax.devices()[0].device_kind}
    run_side(__doc__, figures, Split(*synthetic_split(2048, 0)), measure_steps, measure_eval, measure_e2e)


if __name__ == "__main__":
    main()
