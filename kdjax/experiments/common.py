"""What every experiment command shares: flags, data, the teacher and its cache, checkpoints, outputs."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from kdjax import methods
from kdjax.checkpoint import CheckpointMismatchError, RunCheckpoints
from kdjax.config import EXPERIMENTS, ConfigError, ExperimentConfig, add_flags, from_args
from kdjax.data import Cifar10, DataNotFoundError, load_cifar10
from kdjax.loop import Member, MemberResult, TrainingDivergedError, train_members
from kdjax.memory import ProgramMemoryError
from kdjax.network import Network, tutorial_student, tutorial_teacher
from kdjax.report import write_run
from kdjax.teacher_cache import compute_teacher_cache

FORMAT = 2  # checkpoint layout: params {"model", "adapter"}, stacked [members, ...]


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able settings, or of an array tree's bytes."""
    digest = hashlib.sha256()
    if isinstance(value, (dict, list, tuple, str)):
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    else:
        for leaf in jax.tree.leaves(value):
            digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def load_data(config: ExperimentConfig) -> Cifar10:
    data = load_cifar10(config.data_dir, source=config.data_source)  # type: ignore[arg-type]
    for flag, size, available in (("--train-size", config.train_size, len(data.train)),
                                  ("--test-size", config.test_size, len(data.test))):
        if size is not None and size > available:
            raise ConfigError(f"{flag} {size:,} exceeds the {available:,} images of {data.origin}")
    data = data.subset(config.train_size, config.test_size)
    if config.batch_size > len(data.train):
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(data.train):,} training images")
    log(f"data: {data.origin}; train {len(data.train):,}, test {len(data.test):,} "
        f"(loaded in {data.load_seconds:.1f} s)")
    return data


class Checkpoints:
    """Where each program's checkpoints live: `<checkpoint_dir>/<kind>/<identity hash>/`.

    The identity is what determines the program's trajectory (networks, members, optimiser,
    data, the teacher's weights), not its length, so a finished program extends to more
    epochs and one teacher serves every student that matches it.
    """

    def __init__(self, config: ExperimentConfig, data: Cifar10):
        self.root = pathlib.Path(config.checkpoint_dir)
        self.restart = config.restart
        self.shared = {"format": FORMAT, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                       "augment": config.augment, "data": data.fingerprint}

    def for_members(self, kind: str, network: Network, teacher: str | None = None):
        def make(members: Sequence[Member]) -> RunCheckpoints:
            identity = {**self.shared, "network": network.name, "teacher": teacher,
                        "members": [[m.method, m.seed, list(m.hyperparameters)] for m in members]}
            directory = self._folder(kind) / fingerprint(identity)
            if self.restart and directory.exists() and jax.process_index() == 0:
                aside = directory.with_name(f"{directory.name}.restarted-{time.strftime('%Y%m%d-%H%M%S')}")
                directory.rename(aside)
                log(f"--restart: moved {directory} to {aside.name}")
            return RunCheckpoints(directory, identity)

        return make

    def _folder(self, kind: str) -> pathlib.Path:
        folder = self.root / kind
        old = sorted(p.name for p in folder.glob("[0-9]*") if p.is_dir() and p.name.isdigit()) if folder.exists() else []
        if old:
            raise CheckpointMismatchError(
                f"{folder} holds checkpoints of an earlier kdjax version (steps {', '.join(old)}), which this version "
                f"cannot restore: move them away (e.g. mv {folder} {folder}-old) and rerun to train anew")
        return folder


def train_teacher(config: ExperimentConfig, data: Cifar10, checkpoints: Checkpoints,
                  seeds: Sequence[int] | None = None) -> tuple[list[MemberResult], Any]:
    """The teacher members (default: `--teacher-seed`), trained or restored; returns (results, stacked states)."""
    teacher = tutorial_teacher()
    members = [Member.of("ce", seed) for seed in (seeds or [config.teacher_seed])]
    programs = train_members(members, teacher, data.train, data.test, config.settings(teacher=True),
                             checkpoints.for_members("teacher", teacher), log=log, desc="teacher")
    (program,) = programs
    return program.results, program.states


def train_students(config: ExperimentConfig, data: Cifar10, checkpoints: Checkpoints,
                   teacher_params: Any) -> list[MemberResult]:
    members = config.members()
    teacher, student = tutorial_teacher(), tutorial_student()
    teacher_id = fingerprint(teacher_params) if teacher_params is not None else None
    reads = {role for name in config.student_methods for role in methods.get(name).reads}

    def teacher_source() -> tuple[Any, bool]:
        reason = config.teacher_cache_off_reason()
        if reason:
            log(f"teacher cache off ({reason}): the teacher runs inside every student step")
            return teacher_params, False
        start = time.perf_counter()
        cache = jax.block_until_ready(compute_teacher_cache(teacher, teacher_params, data.train, reads))
        log(f"teacher cache: {', '.join(sorted(cache))} for {len(data.train):,} images in "
            f"{time.perf_counter() - start:.1f} s")
        return cache, True

    programs = train_members(members, student, data.train, data.test, config.settings(),
                             lambda chunk: checkpoints.for_members(
                                 chunk[0].method, student,
                                 teacher_id if methods.get(chunk[0].method).needs_teacher else None)(chunk),
                             teacher=teacher, teacher_source=teacher_source if teacher_params is not None else None,
                             log=log, desc="student")
    return [result for program in programs for result in program.results]


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"{platform.node() or 'host'}: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
            f"({jax.default_backend()}), jax {jax.__version__}")


def parse_config(name: str, argv: list[str] | None) -> ExperimentConfig:
    what = {"teacher": "The teacher (DeepNN, CE)", "all": "The whole tutorial: the teacher, then the four students",
            "baseline": "The student (LightNN) with CE alone"}
    parser = argparse.ArgumentParser(
        prog=f"python -m kdjax.experiments.{name}",
        description=f"{what.get(name) or methods.get(name).summary} on CIFAR-10, with the PyTorch Knowledge "
                    "Distillation Tutorial's settings by default.")
    add_flags(parser, name)
    return from_args(name, parser.parse_args(argv)).validate()


def run(name: str, argv: list[str] | None = None) -> int:
    """Run experiment `name` (`teacher`, a student method, or `all`); returns the process exit code."""
    from kdjax.cpu import use_fast_cpu_kernels

    try:
        if name not in EXPERIMENTS and name != "all":
            raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}, all")
        config = parse_config(name, argv)
        if config.distributed:
            jax.distributed.initialize()  # coordinator, process count and id from the launcher's environment
        else:
            use_fast_cpu_kernels()
        if config.devices > jax.device_count():
            raise ConfigError(f"--devices {config.devices}: only {jax.device_count()} {jax.default_backend()} "
                              f"device(s) here; pass --devices between 1 and {jax.device_count()} (0: all)")
        log(f"config: {json.dumps(dataclasses.asdict(config))}")
        try:
            data = load_data(config)
        except ValueError as error:  # corrupt or unsafe files: the message names the file
            if isinstance(error, ConfigError):
                raise
            raise DataNotFoundError(str(error)) from error
        start = time.perf_counter()
        checkpoints = Checkpoints(config, data)
        if name == "teacher":
            teacher_results, _ = train_teacher(config, data, checkpoints, config.seeds)
            students = []
        elif config.needs_teacher:
            teacher_results, states = train_teacher(config, data, checkpoints)
            students = train_students(config, data, checkpoints, jax.tree.map(lambda a: a[0], states.params["model"]))
        else:
            teacher_results = []
            students = train_students(config, data, checkpoints, None)
        outputs = {**dataclasses.asdict(config), "machine": machine_line(),
                   "seconds_this_invocation": time.perf_counter() - start}
        run_dir = pathlib.Path(config.output_dir) / f"{name}-{fingerprint(run_identity(config))}"
        if jax.process_index() == 0:
            text = write_run(run_dir, outputs, teacher_results, students)
            log("\n" + text)
        log(f"{name}: outputs in {run_dir}")
        return 0
    except (ConfigError, DataNotFoundError, CheckpointMismatchError, TrainingDivergedError,
            ProgramMemoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def run_identity(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that decide a run's results (not where it writes, nor how it is laid out)."""
    skip = {"checkpoint_dir", "output_dir", "restart", "distributed", "devices", "members_per_program",
            "member_batching", "cache", "save_every_steps"}
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in skip}
