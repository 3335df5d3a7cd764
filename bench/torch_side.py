"""The PyTorch tutorial's half of `python -m bench`: the same figures, from its own code.

`--variant eager` runs the code as written (NCHW); `channels_last` converts every model (and
the step cases' input batches) to `torch.channels_last`, the first thing a PyTorch user tunes
on CPU; `compile` also wraps each model in `torch.compile` (steps and eval only).
"""

from __future__ import annotations

import itertools
import pathlib
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "reference"))
import tutorial_torch as tut  # noqa: E402 - the tutorial's own code, kept beside the parity fixture
import zoo_torch  # noqa: E402 - the benchmarks' CIFAR networks, restated for the zoo's parity fixture

from bench.common import (BATCH, ZOO_CASES, batch_size, median_rate, step_cases, run_side, side_parser,
                          steps_per_window, synthetic_split)
from kdjax.data.normalization import MEAN, STD

MODELS = {  # case -> (student class, teacher class, loss body)
    "teacher_ce": (tut.DeepNN, None, tut.loss_ce),
    "student_ce": (tut.LightNN, None, tut.loss_ce),
    "kd": (tut.LightNN, tut.DeepNN, tut.loss_kd),
    "cosine": (tut.ModifiedLightNNCosine, tut.ModifiedDeepNNCosine, tut.loss_cosine),
    "hint": (tut.ModifiedLightNNRegressor, tut.ModifiedDeepNNRegressor, tut.loss_hint),
}


def _tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """Pre-normalised NCHW float tensors, as `ToTensor()` + `Normalize` would produce them."""
    x = (images.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return TensorDataset(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels.astype(np.int64)))


def _batches(dataset: TensorDataset, batch: int = BATCH):
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    return itertools.chain.from_iterable(loader for _ in itertools.count())


def tuned(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    """`model` as `variant` runs it (the parameters stay shared with `model`)."""
    if variant == "eager":
        return model
    model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if variant == "compile" else model


def _layout(inputs: torch.Tensor, variant: str) -> torch.Tensor:
    return inputs if variant == "eager" else inputs.contiguous(memory_format=torch.channels_last)


def measure_steps(dataset: TensorDataset, args) -> dict:
    results = {}
    for case in step_cases(args.skip_cases):
        student_cls, teacher_cls, loss_fn = MODELS.get(case) or (
            lambda name=ZOO_CASES[case]: zoo_torch.NETWORKS[name](10), None, _zoo_ce)
        batch = batch_size(case)
        torch.manual_seed(42)
        plain_student = student_cls().train()
        student = tuned(plain_student, args.variant)
        teacher = tuned(teacher_cls().eval(), args.variant) if teacher_cls else None
        optimizer = torch.optim.Adam(plain_student.parameters(), lr=1e-3)
        batches = _batches(dataset, batch)

        def window(n=steps_per_window(case)):
            for _ in range(n):
                inputs, labels = next(batches)
                inputs = _layout(inputs, args.variant)
                optimizer.zero_grad()
                loss_fn(student, teacher, inputs, labels).backward()
                optimizer.step()

        window()  # warm-up: one full window, as on the kdjax side
        results[case] = {"images_per_s": median_rate(window, steps_per_window(case) * batch, args.windows)}
    return results


def _zoo_ce(student, teacher, inputs, labels):
    """CE on a zoo network, whose forward also returns its features."""
    return torch.nn.functional.cross_entropy(student(inputs)[0], labels)


def measure_eval(dataset: TensorDataset, args) -> dict:
    results = {}
    for name, cls in (("teacher", tut.DeepNN), ("student", tut.LightNN)):
        model = tuned(cls().eval(), args.variant)
        batches = _batches(dataset)

        def window():
            with torch.no_grad():
                for _ in range(10):
                    model(_layout(next(batches)[0], args.variant))

        window()
        results[f"eval_{name}"] = {"images_per_s": median_rate(window, 10 * BATCH, args.windows)}
    return results


def measure_e2e(args) -> dict:
    """The tutorial's whole procedure: teacher, then CE / KD / cosine / hint students from seed-42 weights."""
    if args.data_dir:
        from kdjax.data import load_cifar10

        data = load_cifar10(args.data_dir).subset(args.e2e_train_size, args.e2e_test_size)
        train_set, test_set = _tensors(data.train.inputs, data.train.labels), _tensors(data.test.inputs, data.test.labels)
    else:
        train_set = _tensors(*synthetic_split(args.e2e_train_size, 0))
        test_set = _tensors(*synthetic_split(args.e2e_test_size, 1))
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=BATCH, shuffle=False)
    epochs, accuracy = args.e2e_epochs, {}
    if args.variant == "compile":
        return {}
    start = time.perf_counter()
    torch.manual_seed(42)
    teacher = tuned(tut.DeepNN(), args.variant)
    tut.train(teacher, train_loader, epochs, 1e-3)
    accuracy["teacher"] = tut.test(teacher, test_loader)
    torch.manual_seed(42)
    initial = tut.LightNN().state_dict()
    baseline = tut.LightNN()
    baseline.load_state_dict(initial)
    baseline = tuned(baseline, args.variant)
    tut.train(baseline, train_loader, epochs, 1e-3)
    accuracy["baseline"] = tut.test(baseline, test_loader)
    for name, student_cls, teacher_cls, loss_fn in (
        ("kd", tut.LightNN, tut.DeepNN, tut.loss_kd),
        ("cosine", tut.ModifiedLightNNCosine, tut.ModifiedDeepNNCosine, tut.loss_cosine),
        ("hint", tut.ModifiedLightNNRegressor, tut.ModifiedDeepNNRegressor, tut.loss_hint),
    ):
        student, modified_teacher = student_cls(), teacher_cls()
        student.load_state_dict(initial, strict=False)  # the regressor keeps its own init
        modified_teacher.load_state_dict(teacher.state_dict())
        student, modified_teacher = tuned(student, args.variant), tuned(modified_teacher, args.variant)
        tut.train_distillation(modified_teacher, student, train_loader, epochs, 1e-3, loss_fn)
        accuracy[name] = tut.test(student, test_loader)
    return {"e2e": {"seconds": time.perf_counter() - start, "accuracy": accuracy}}


def main() -> None:
    figures = {"versions": {"torch": torch.__version__}, "threads": torch.get_num_threads(),
               "variant": side_parser(__doc__).parse_args().variant}
    run_side(__doc__, figures, _tensors(*synthetic_split(2048, 0)), measure_steps, measure_eval, measure_e2e)


if __name__ == "__main__":
    main()
