"""One typed config per experiment, its command-line flags, and up-front validation."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import tempfile
from typing import Any

from kdjax.train import Objective

# Experiment name -> objective trained; `teacher` trains DeepNN, the rest LightNN.
EXPERIMENTS: dict[str, Objective] = {"teacher": "ce", "baseline": "ce", "kd": "kd", "cosine": "cosine", "hint": "hint"}


class ConfigError(ValueError):
    """A flag value that cannot work; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one run. Defaults are the PyTorch tutorial's.

    Full run on a local copy, e.g. `python -m kdjax.experiments.all --data-dir ../shared/data`
    (timings and accuracies in experiments/RESULTS.md).
    """

    name: str = "hint"
    epochs: int = 10
    learning_rate: float = 1e-3  # Adam, PyTorch's default betas and eps
    batch_size: int = 128
    temperature: float = 2.0  # KD softmax temperature T
    ce_weight: float = 0.75  # weight of the label cross-entropy in student objectives
    aux_weight: float = 0.25  # weight of the KD / cosine / hint term
    seed: int = 42  # initial weights, data order and dropout all derive from it
    data_source: str = "auto"  # auto | local | tfds
    data_dir: str | None = None  # local CIFAR-10 copy; default $KDJAX_DATA_DIR, else tfds
    train_size: int | None = None  # first N training images (None: all 50,000)
    test_size: int | None = None  # first N test images (None: all 10,000)
    checkpoint_dir: str = "checkpoints"
    output_dir: str = "experiments/runs"
    cache: bool = True  # precompute the teacher's outputs once instead of running it every step
    augment: bool = False  # random horizontal flips (the tutorial uses none; turns the teacher cache off)
    save_every_steps: int = 200  # checkpoint cadence inside an epoch, besides every epoch end
    loader: str = "resident"  # resident (whole split on the device) | streaming
    devices: int = 0  # data-parallel over the first N devices (0: all of them)
    distributed: bool = False  # call jax.distributed.initialize() first (multi-host launches)

    @property
    def objective(self) -> Objective:
        return EXPERIMENTS[self.name]

    def teacher_cache_off_reason(self) -> str | None:
        """Why the teacher-output cache cannot be used with these settings, or None if it can."""
        if not self.cache:
            return "--no-cache"
        if self.augment:
            return "--augment feeds the teacher a different image of each example every epoch"
        return None

    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError on values that cannot work, before anything expensive runs."""
        checks = [
            (self.name in EXPERIMENTS or self.name == "all", f"unknown experiment {self.name!r}; choose from {', '.join(EXPERIMENTS)}, all"),
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.learning_rate > 0, f"--learning-rate must be > 0, got {self.learning_rate}"),
            (self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}"),
            (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            (self.ce_weight >= 0, f"--ce-weight must be >= 0, got {self.ce_weight}"),
            (self.aux_weight >= 0, f"--aux-weight must be >= 0, got {self.aux_weight}"),
            (self.train_size is None or self.train_size > 0, f"--train-size must be > 0, got {self.train_size}"),
            (self.test_size is None or self.test_size > 0, f"--test-size must be > 0, got {self.test_size}"),
            (self.save_every_steps >= 0, f"--save-every-steps must be >= 0, got {self.save_every_steps}"),
            (self.data_source in ("auto", "local", "tfds"), f"--data-source must be auto, local or tfds, got {self.data_source!r}"),
            (self.loader in ("resident", "streaming"), f"--loader must be resident or streaming, got {self.loader!r}"),
            (self.devices >= 0, f"--devices must be >= 0 (0: all devices), got {self.devices}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.data_dir is not None:
            path = pathlib.Path(self.data_dir).expanduser()
            if not path.exists():
                raise ConfigError(f"--data-dir {self.data_dir} does not exist")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"--data-dir {self.data_dir} is not readable")
        for flag, directory in (("--checkpoint-dir", self.checkpoint_dir), ("--output-dir", self.output_dir)):
            _check_writable(flag, pathlib.Path(directory))
        return self

    def training_identity(self) -> dict[str, Any]:
        """The settings that determine a run's trajectory (not where it writes)."""
        keys = ("name", "epochs", "learning_rate", "batch_size", "seed", "train_size", "augment")
        if self.objective != "ce":
            keys += ("temperature", "ce_weight", "aux_weight")
        return {key: getattr(self, key) for key in keys}


def _check_writable(flag: str, directory: pathlib.Path) -> None:
    """Create `directory` if needed and write a probe file there: permission bits alone say nothing to root."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {directory} is not writable ({error.strerror or error})") from error


_HELP = {
    "epochs": "training epochs",
    "learning_rate": "Adam learning rate",
    "batch_size": "images per step",
    "temperature": "KD softmax temperature T (> 0)",
    "ce_weight": "weight of the cross-entropy term in student objectives",
    "aux_weight": "weight of the KD / cosine / hint term",
    "seed": "seed for initial weights, data order and dropout",
    "data_source": "auto (local if --data-dir/$KDJAX_DATA_DIR is set, else tensorflow-datasets), local or tfds",
    "data_dir": "local CIFAR-10 copy: cifar-10-batches-bin/-py, their .tar.gz, a tfds data dir, or a folder holding one",
    "train_size": "use only the first N training images",
    "test_size": "use only the first N test images",
    "checkpoint_dir": "where Orbax checkpoints go (the teacher's in <dir>/teacher)",
    "output_dir": "where run folders (config, metrics, plots) go",
    "cache": "precompute the teacher's outputs once per teacher checkpoint and data (--no-cache: run it every step)",
    "augment": "mirror training images left-right at random (not in the tutorial; disables the teacher cache)",
    "save_every_steps": "also checkpoint every N steps inside an epoch (0: only at epoch ends)",
    "loader": "resident: whole split on the device; streaming: batches prefetched from the host",
    "devices": "train data-parallel on the first N devices, the batch split between them (0: all devices)",
    "distributed": "call jax.distributed.initialize() before anything else (one process per host; see README)",
}


def add_flags(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config field (except `name` and `exclude`), defaulting to the tutorial's values."""
    defaults = ExperimentConfig()
    for field in dataclasses.fields(ExperimentConfig):
        if field.name == "name" or field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = f"{_HELP[field.name]} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            kind = {"int | None": int, "str | None": str}.get(str(field.type), type(default))
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def from_args(name: str, args: argparse.Namespace) -> ExperimentConfig:
    """The config named `name` from parsed flags; fields without a flag keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
              if f.name != "name" and hasattr(args, f.name)}
    return ExperimentConfig(name=name, **values)
