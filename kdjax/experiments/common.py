"""What every experiment script shares: flags, data, the teacher, the teacher cache, outputs."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import platform
import sys
import time
from typing import Any

import jax
import numpy as np

from kdjax.checkpoint import CheckpointMismatchError, RunCheckpoints
from kdjax.config import EXPERIMENTS, ConfigError, ExperimentConfig, add_flags, from_args
from kdjax.data import Cifar10, DataNotFoundError, load_cifar10
from kdjax.loop import RunResult, TrainingDivergedError, train
from kdjax.models import DeepNN, LightNN, ModelOutput
from kdjax.teacher_cache import FIELD_FOR_OBJECTIVE, compute_teacher_cache

STUDENTS = ("baseline", "kd", "cosine", "hint")
TITLES = {"teacher": "Teacher (CE)", "baseline": "Student (CE)", "kd": "Student (CE + KD)",
          "cosine": "Student (CE + cosine)", "hint": "Student (CE + hint)"}


def log(message: str) -> None:
    print(message, flush=True)


def params_fingerprint(params: Any) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:32]


def load_data(config: ExperimentConfig) -> Cifar10:
    data = load_cifar10(config.data_dir, source=config.data_source)  # type: ignore[arg-type]
    data = data.subset(config.train_size, config.test_size)
    log(f"data: {data.origin}; train {len(data.train):,}, test {len(data.test):,} "
        f"(loaded in {data.load_seconds:.1f} s)")
    return data


def _checkpoints(config: ExperimentConfig, model_name: str, data: Cifar10, **extra: str) -> RunCheckpoints:
    identity = {"model": model_name, **config.training_identity(), "data": data.fingerprint, **extra}
    return RunCheckpoints(pathlib.Path(config.checkpoint_dir) / config.name, identity)


def ensure_teacher(config: ExperimentConfig, data: Cifar10) -> RunResult:
    """The trained teacher: loaded from `<checkpoint_dir>/teacher`, trained (or finished) first if needed."""
    teacher_config = dataclasses.replace(config, name="teacher")
    checkpoints = _checkpoints(teacher_config, "DeepNN", data)
    steps = checkpoints.steps()
    if not steps:
        log(f"no trained teacher in {checkpoints.directory}: training it first")
    result = train(teacher_config, data, DeepNN(), checkpoints, log=log)
    checkpoints.close()
    return result


def run_student(
    config: ExperimentConfig, data: Cifar10, teacher: RunResult | None, cache: ModelOutput | None
) -> RunResult:
    extra = {} if teacher is None else {"teacher": params_fingerprint(teacher.state.params)}
    checkpoints = _checkpoints(config, "LightNN", data, **extra)
    model = LightNN(hint=config.objective == "hint")
    teacher_params = None if teacher is None else teacher.state.params
    result = train(config, data, model, checkpoints, teacher_params=teacher_params, teacher_cache=cache, log=log)
    checkpoints.close()
    return result


def build_cache(config: ExperimentConfig, data: Cifar10, teacher: RunResult, objectives: list[str]) -> ModelOutput | None:
    reason = config.teacher_cache_off_reason()
    if reason:
        log(f"teacher cache off ({reason}): the teacher runs inside every student step")
        return None
    fields = [FIELD_FOR_OBJECTIVE[o] for o in objectives if o in FIELD_FOR_OBJECTIVE]
    start = time.perf_counter()
    cache = compute_teacher_cache(teacher.state.params, data.train, fields)
    jax.block_until_ready(cache)
    log(f"teacher cache: {', '.join(fields)} for {len(data.train):,} images in {time.perf_counter() - start:.1f} s")
    return cache


def write_run(run_dir: pathlib.Path, config: ExperimentConfig, result: RunResult) -> None:
    """config.json, metrics.jsonl, final.json and loss/accuracy plots for one run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    with open(run_dir / "metrics.jsonl", "w") as f:
        for row in result.history:
            f.write(json.dumps(row) + "\n")
    final = {key: value for key, value in dataclasses.asdict(result).items() if key not in ("state", "history")}
    (run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    if result.history:
        _plot(run_dir, result)


def _plot(run_dir: pathlib.Path, result: RunResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in result.history]
    for metric, label, filename in (("train_loss", "train loss", "loss.png"),
                                    ("test_accuracy", "test accuracy (%)", "accuracy.png")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(epochs, [row[metric] for row in result.history], marker="o")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{TITLES.get(result.name, result.name)}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(run_dir / filename, dpi=100)
        plt.close(fig)


def results_table(results: list[RunResult]) -> str:
    lines = ["| run | model | parameters | test accuracy | train time (s) | train images/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {TITLES[r.name]} | {r.model} | {r.parameters:,} | {r.test_accuracy:.2f}% | "
                     f"{r.train_seconds:.1f} | {r.images_per_second:,.0f} |")
    return "\n".join(lines)


def machine_line() -> str:
    device = jax.devices()[0]
    return f"{platform.node() or 'host'}: {platform.machine()}, {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}"


def parse_config(name: str, argv: list[str] | None) -> ExperimentConfig:
    parser = argparse.ArgumentParser(
        prog=f"python -m kdjax.experiments.{name}",
        description=f"{TITLES.get(name, 'The whole tutorial: teacher, then the four students')} on CIFAR-10, "
                    "with the PyTorch Knowledge Distillation Tutorial's settings by default.",
    )
    add_flags(parser)
    return from_args(name, parser.parse_args(argv)).validate()


def run(name: str, argv: list[str] | None = None) -> int:
    """Run experiment `name` (`teacher`, a student, or `all`); returns the process exit code."""
    try:
        if name not in EXPERIMENTS and name != "all":
            raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}, all")
        config = parse_config(name, argv)
        if config.distributed:
            jax.distributed.initialize()  # coordinator, process count and id from the launcher's environment
        log(f"config: {json.dumps(dataclasses.asdict(config))}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = pathlib.Path(config.output_dir) / f"{name}-{stamp}"
        try:
            data = load_data(config)
        except ValueError as error:  # corrupt or unsafe files: the message names the file
            raise DataNotFoundError(str(error)) from error
        start = time.perf_counter()
        if name == "all":
            results = run_all(config, data, run_dir)
            table = results_table(results)
            report = (f"{table}\n\nWhole run: {time.perf_counter() - start:.0f} s on {machine_line()}\n")
            (run_dir / "results.md").write_text(report)
            log("\n" + report)
        else:
            result = _run_one(config, data)
            write_run(run_dir, config, result)
            log(f"{name}: test accuracy {result.test_accuracy:.2f}% ({result.parameters:,} parameters); "
                f"outputs in {run_dir}")
        return 0
    except (ConfigError, DataNotFoundError, CheckpointMismatchError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _run_one(config: ExperimentConfig, data: Cifar10) -> RunResult:
    if config.name == "teacher":
        return ensure_teacher(config, data)
    teacher = cache = None
    if config.objective != "ce":
        teacher = ensure_teacher(config, data)
        cache = build_cache(config, data, teacher, [config.objective])
    return run_student(config, data, teacher, cache)


def run_all(config: ExperimentConfig, data: Cifar10, run_dir: pathlib.Path) -> list[RunResult]:
    """The whole tutorial on `data`: the teacher, then the four students; per-run outputs under `run_dir`."""
    teacher = ensure_teacher(config, data)
    write_run(run_dir / "teacher", dataclasses.replace(config, name="teacher"), teacher)
    objectives = [EXPERIMENTS[name] for name in STUDENTS]
    cache = build_cache(config, data, teacher, objectives)
    results = [teacher]
    for name in STUDENTS:
        student_config = dataclasses.replace(config, name=name)
        result = run_student(student_config, data, teacher if EXPERIMENTS[name] != "ce" else None, cache)
        write_run(run_dir / name, student_config, result)
        results.append(result)
    return results
