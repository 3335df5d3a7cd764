"""What every experiment command shares: its flags, parsed into an `ExperimentConfig`, then the library's run
(`kdjax.run.train_and_evaluate`), with the errors a user can fix printed in one line."""

from __future__ import annotations

import json
import sys

import jax

from kdjax import methods
from kdjax.checkpoint import CheckpointMismatchError
from kdjax.config import ConfigError, ExperimentConfig, check_experiment
from kdjax.data import DataNotFoundError, ImageFileError
from kdjax.engine import ProgramMemoryError, TrainingDivergedError
from kdjax.experiments.flags import OneLineParser, UsageError, add_flags, from_args
from kdjax.run import load, log, train_and_evaluate


def parse_config(name: str, argv: list[str] | None) -> ExperimentConfig:
    what = {"teacher": "The teacher (--teacher, DeepNN by default) with CE",
            "all": "The whole tutorial: the teacher, then the four students",
            "methods": "Every registered method's student from one teacher, seeds paired across methods",
            "baseline": "The student (--student, LightNN by default) with CE alone"}
    if name == "lm":
        description = ("CE, KD and GKD students of a causal language model from one teacher, seeds paired across "
                       "methods, on Python's help text (or --dataset text:PATH / tokens:PATH) with the char-lm recipe.")
    else:
        description = (f"{what.get(name) or methods.get(name).summary} on CIFAR-10 (or --dataset), with the PyTorch "
                       "Knowledge Distillation Tutorial's settings by default.")
    parser = OneLineParser(prog=f"python -m kdjax.experiments.{name}", description=description)
    add_flags(parser, name)
    return from_args(name, parser.parse_args(argv)).validate()


def run(name: str, argv: list[str] | None = None) -> int:
    """Run experiment `name` (`teacher`, a student method, or `all`) from its flags; returns the exit code."""
    from kdjax.cpu import use_fast_cpu_kernels

    try:
        check_experiment(name)
        config = parse_config(name, argv)
        if config.distributed:
            jax.distributed.initialize()  # coordinator, process count and id from the launcher's environment
        else:
            use_fast_cpu_kernels()
        if config.training.devices > jax.device_count():
            raise ConfigError(f"--devices {config.training.devices}: only {jax.device_count()} {jax.default_backend()} "
                              f"device(s) here; pass --devices between 1 and {jax.device_count()} (0: all)")
        log(f"config: {json.dumps(config.flat())}")
        try:
            data = load(config)
        except ValueError as error:  # corrupt or unsafe files: the message names the file
            raise DataNotFoundError(str(error)) from error
        train_and_evaluate(config, data)
        return 0
    except (ConfigError, DataNotFoundError, CheckpointMismatchError, TrainingDivergedError,
            ProgramMemoryError, ImageFileError) as error:  # an image met mid-run: the checkpoints stand
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
