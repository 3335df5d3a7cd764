"""One typed config for every experiment command, its flags, and up-front validation."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import tempfile
from typing import Any

from kdjax import methods
from kdjax.data import DATASETS
from kdjax.data.normalization import CHOICES as NORMALIZE_CHOICES, HELP as NORMALIZE_HELP
from kdjax.engine import AUGMENTATIONS, MEMBER_BATCHING, Settings
from kdjax.optimizers import OPTIMIZERS, SCHEDULES

TUTORIAL_STUDENTS = ("ce", "kd", "cosine", "hint")
# Experiments that train several methods' students from one teacher: name -> the methods, CE first.
GROUPS = {"all": TUTORIAL_STUDENTS, "methods": ("ce", *(name for name in methods.METHODS if name != "ce")),
          "lm": ("ce", "kd", "gkd")}
DEFAULT_RECIPES = {"lm": "char-lm"}  # experiment -> the recipe it runs unless --recipe names another
# Flags that decide where a run writes or how its members are laid out, not its results.
LAYOUT_SETTINGS = frozenset({"checkpoint_dir", "output_dir", "restart", "distributed", "devices",
                             "members_per_program", "member_batching", "cache", "save_every_steps",
                             "log_every_steps", "export_weights"})
# Experiment name -> method trained; `teacher` trains DeepNN, the others LightNN.
EXPERIMENTS = {"teacher": "ce", "baseline": "ce", **{name: name for name in methods.METHODS if name != "ce"}}


# Named recipes: the settings a published training procedure uses, applied before the flags given.
# cifar-kd: RepDistiller / mdistiller's CIFAR-100 recipe (240 epochs of SGD, x0.1 at 150, 180, 210).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar-kd": {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
                 "epochs": 240, "schedule": "step", "milestones": (150, 180, 210), "decay_factor": 0.1,
                 "augment": "crop-flip", "normalize": "dataset",
                 # mdistiller's CIFAR-100 configs (configs/cifar100/*.yaml): KD's weights; DKD's warm-up is set
                 # to 1/12 of training (its 20 of 240 epochs) once the data's size is known (RECIPE_WARMUP).
                 "method_defaults": (("kd", (("aux_weight", 0.9), ("ce_weight", 0.1), ("temperature", 4.0))),)},
    # char-lm: next-token distillation on Python's help text, character-level (vocabulary 103), windows of 128;
    # Adam 3e-3, batch 32; KD at T = 1 weighted as GKD (CE 0.5 + 0.5), so that the two divergences compare.
    "char-lm": {"dataset": "text", "teacher": "causal_conv_128x5", "student": "causal_conv_32x2",
                "optimizer": "adam", "learning_rate": 3e-3, "batch_size": 32, "epochs": 10, "augment": "none",
                "method_defaults": (("kd", (("aux_weight", 0.5), ("ce_weight", 0.5), ("temperature", 1.0))),)},
}
RECIPE_WARMUP = {"cifar-kd": ("dkd", "warmup_steps", 20 / 240)}  # recipe -> (method, hyperparameter, of training)
SMALL_LEARNING_RATE_STUDENTS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # cifar-kd trains them at 0.01


def recipe_values(recipe: str | None, student: str) -> dict[str, Any]:
    """The settings `recipe` gives a run whose student is `student` ({} for none)."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    values = dict(RECIPES[recipe])
    if recipe == "cifar-kd" and student in SMALL_LEARNING_RATE_STUDENTS:
        values["learning_rate"] = 0.01
    return values


class ConfigError(ValueError):
    """A flag value that cannot work; the message says which and why."""


class UsageError(ConfigError):
    """Flags that do not parse (argparse's own complaint); the command exits 2, as argparse would."""


class OneLineParser(argparse.ArgumentParser):
    """`argparse` whose errors are one line (raised as UsageError), not the usage block then the error."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help lists the flags)")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Settings of one experiment command. Defaults are the PyTorch tutorial's.

    Full tutorial on a local copy: `python -m kdjax.experiments.all --data-dir DIR` (about
    2 hours on a 2-core CPU; results in experiments/RESULTS.md).
    """

    name: str = "all"
    teacher: str = "deepnn"  # network names: `kdjax.zoo.names()`; the tutorial's pair by default
    student: str = "lightnn"
    recipe: str | None = None  # a named set of the settings below (RECIPES); flags given override it
    epochs: int = 10
    teacher_epochs: int | None = None  # None: --epochs
    teacher_augment: str | None = None  # None: --augment
    learning_rate: float = Settings.learning_rate
    optimizer: str = Settings.optimizer
    momentum: float = Settings.momentum
    nesterov: bool = Settings.nesterov
    weight_decay: float = Settings.weight_decay
    schedule: str = Settings.schedule
    milestones: tuple[int, ...] = Settings.milestones
    decay_factor: float = Settings.decay_factor
    warmup_epochs: float = Settings.warmup_epochs
    dataset: str = "cifar10"  # cifar10 | cifar100 | npz:PATH | text | text:PATH | tokens:PATH
    window: int = 128  # tokens per example of sequence data (text, tokens)
    num_classes: int | None = None  # the class count (vocabulary size); None: the data set's own, or the largest + 1
    normalize: str = "auto"  # one of kdjax.data.normalization.CHOICES; auto: see its HELP
    # (mean, std) per channel: resolved when the data loads (`normalization.choose`), then recorded here
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    batch_size: int = Settings.batch_size
    seeds: tuple[int, ...] = (42,)  # each seed is a member: initial weights, data order and dropout
    teacher_seed: int = 42  # the teacher the students learn from
    teacher_weights: str | None = None  # a trained teacher's PyTorch state_dict (.pth/.pt, or .npz): not trained here
    export_weights: str | None = None  # `teacher` only: write the trained teacher's state_dict to this .npz
    methods: tuple[str, ...] = ()  # `methods` experiment only: which methods (empty: every registered one)
    hyperparameters: tuple[tuple[str, float], ...] = ()  # overrides of the methods' defaults
    method_defaults: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()  # a recipe's: method -> values
    sweep: tuple[tuple[str, tuple[float, ...]], ...] = ()  # hyperparameter grid, crossed with the seeds
    data_source: str = "auto"  # auto | local | tfds
    data_dir: str | None = None  # local CIFAR-10 copy; default $KDJAX_DATA_DIR, else tfds
    train_size: int | None = None  # first N training images (None: all 50,000)
    test_size: int | None = None  # first N test images (None: all 10,000)
    validation_size: int | None = None  # students hold out the last N training images and report accuracy on them
    labelled_size: int | None = None  # only the first N training images keep labels; the teacher learns from them
    checkpoint_dir: str = "checkpoints"
    output_dir: str = "experiments/runs"
    cache: bool = True  # precompute the teacher's outputs once instead of running it every step
    baseline: bool = False  # also train (or restore) CE students of the same seeds and compare with them
    augment: str = Settings.augment
    save_every_steps: int = Settings.save_every_steps
    log_every_steps: int = Settings.log_every_steps
    devices: int = Settings.devices
    members_per_program: int = Settings.members_per_program
    member_batching: str = Settings.member_batching
    restart: bool = False  # move this experiment's checkpoints aside and train from scratch
    distributed: bool = False  # call jax.distributed.initialize() first (multi-host launches)

    @property
    def student_methods(self) -> tuple[str, ...]:
        if self.name in ("methods", "lm") and self.methods:
            return self.methods
        if self.name in GROUPS:
            return GROUPS[self.name]
        if self.name == "teacher":
            return ()
        method = EXPERIMENTS[self.name]
        return ("ce", method) if self.baseline and method != "ce" else (method,)

    @property
    def chosen_methods(self) -> tuple[methods.Method, ...]:
        """The methods `student_methods` names: the one place a command's method names meet the registry."""
        return tuple(methods.get(name) for name in self.student_methods)

    @property
    def needs_teacher(self) -> bool:
        return any(method.needs_teacher for method in self.chosen_methods)

    def settings(self, *, teacher: bool = False) -> Settings:
        epochs = (self.teacher_epochs or self.epochs) if teacher else self.epochs
        augment = (self.teacher_augment or self.augment) if teacher else self.augment
        return Settings(epochs=epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                        optimizer=self.optimizer, momentum=self.momentum, nesterov=self.nesterov,
                        weight_decay=self.weight_decay, schedule=self.schedule, milestones=self.milestones,
                        decay_factor=self.decay_factor, warmup_epochs=self.warmup_epochs,
                        normalization=self.normalization or Settings.normalization,
                        save_every_steps=self.save_every_steps, log_every_steps=self.log_every_steps,
                        augment=augment, devices=self.devices,
                        member_batching=self.member_batching, members_per_program=self.members_per_program,
                        labelled=None if teacher or self.name == "teacher" else self.labelled_size)

    @property
    def sequence_data(self) -> bool:
        """Whether `dataset` is next-token data (text or a token array)."""
        return self.dataset == "text" or self.dataset.startswith(("text:", "tokens:"))

    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError on values that cannot work, before anything expensive runs."""
        unknown = [name for name in self.methods if name not in methods.METHODS]
        if unknown:  # before the checks below, which look the methods up
            raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(methods.METHODS)}")
        check_experiment(self.name)
        from kdjax import zoo

        for flag, network in (("--teacher", self.teacher), ("--student", self.student)):
            if network not in zoo.names():
                raise ConfigError(f"{flag}: unknown network {network!r}; choose from {', '.join(zoo.names())}")
        checks = [
            (len(set(self.methods)) == len(self.methods), f"--methods has a repeated method: {','.join(self.methods)}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.teacher_epochs is None or self.teacher_epochs >= 1,
             f"--teacher-epochs must be >= 1, got {self.teacher_epochs}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"--learning-rate must be a finite number > 0, got {self.learning_rate}"),
            (self.batch_size > 0, f"--batch-size must be > 0, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS,
             f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
             "--nesterov needs --optimizer sgd with --momentum > 0"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"),
            (self.schedule != "step" or bool(self.milestones),
             "--schedule step needs --milestones, e.g. 150,180,210"),
            (all(0 < m for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
             f"--milestones must be increasing epochs > 0, got {','.join(map(str, self.milestones))}"),
            (0 < self.decay_factor <= 1, f"--decay-factor must be in (0, 1], got {self.decay_factor}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.normalize in NORMALIZE_CHOICES,
             f"--normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {self.normalize!r}"),
            (self.num_classes is None or self.num_classes >= 1, f"--num-classes must be >= 1, got {self.num_classes}"),
            (self.dataset in DATASETS or self.dataset.startswith("npz:") or self.sequence_data,
             f"--dataset: unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}, npz:PATH, text, "
             "text:PATH or tokens:PATH"),
            (self.window >= 1, f"--window must be >= 1, got {self.window}"),
            (self.export_weights is None or pathlib.Path(self.export_weights).suffix == ".npz",
             f"--export-weights {self.export_weights}: the weights are written as an .npz; name the file FILE.npz"),
            (self.teacher_weights is None or pathlib.Path(self.teacher_weights).expanduser().is_file(),
             f"--teacher-weights {self.teacher_weights} is not a file"),
            (self.teacher_weights is None or pathlib.Path(self.teacher_weights).suffix in (".pth", ".pt", ".npz"),
             f"--teacher-weights {self.teacher_weights}: expected a PyTorch .pth/.pt or an .npz of its state_dict"),
            (not self.sequence_data or self.augment == "none",
             f"--augment {self.augment} flips and crops images; next-token data takes --augment none"),
            (len(set(self.seeds)) == len(self.seeds), f"--seeds has a repeated seed: {self.seeds}"),
            (self.train_size is None or self.train_size > 0, f"--train-size must be > 0, got {self.train_size}"),
            (self.test_size is None or self.test_size > 0, f"--test-size must be > 0, got {self.test_size}"),
            (self.validation_size is None or self.validation_size > 0,
             f"--validation-size must be > 0, got {self.validation_size}"),
            (self.labelled_size is None or self.labelled_size > 0,
             f"--labelled-size must be > 0, got {self.labelled_size}"),
            (not (self.labelled_size and any(m.uses_labels for m in self.chosen_methods)),
             f"--labelled-size: {', '.join(m.name for m in self.chosen_methods if m.uses_labels)} reads "
             "every example's label, which unlabelled examples lack; leave it out of partly labelled runs"),
            (self.save_every_steps >= 0, f"--save-every-steps must be >= 0, got {self.save_every_steps}"),
            (self.log_every_steps >= 0, f"--log-every-steps must be >= 0, got {self.log_every_steps}"),
            (self.data_source in ("auto", "local", "tfds"),
             f"--data-source must be auto, local or tfds, got {self.data_source!r}"),
            (self.devices >= 0, f"--devices must be >= 0 (0: all devices), got {self.devices}"),
            (self.members_per_program >= 0, f"--members-per-program must be >= 0, got {self.members_per_program}"),
            (self.augment in AUGMENTATIONS,
             f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.teacher_augment in (None, *AUGMENTATIONS),
             f"--teacher-augment must be one of {', '.join(AUGMENTATIONS)}, got {self.teacher_augment!r}"),
            (self.member_batching in MEMBER_BATCHING,
             f"--member-batching must be one of {', '.join(MEMBER_BATCHING)}, got {self.member_batching!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.members()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.data_dir is not None:
            path = pathlib.Path(self.data_dir).expanduser()
            if not path.exists():
                raise ConfigError(f"--data-dir {self.data_dir} does not exist")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"--data-dir {self.data_dir} is not readable")
        for flag, directory in (("--checkpoint-dir", self.checkpoint_dir), ("--output-dir", self.output_dir),
                                *((("--export-weights", pathlib.Path(self.export_weights).expanduser().parent),)
                                  if self.export_weights else ())):
            _check_writable(flag, pathlib.Path(directory))
        return self

    def members(self):
        """The student members (or, for `teacher`, the teacher members) this command trains."""
        from kdjax.engine import expand_members

        chosen = self.chosen_methods or (methods.CE,)
        overrides = dict(self.hyperparameters)
        for name, value in (*overrides.items(), *((n, v) for n, values in self.sweep for v in values)):
            try:
                methods.check_hyperparameter(name, value)
            except ValueError as error:
                raise ConfigError(f"--{name.replace('_', '-')}{str(error)[len(name):]}") from None
        if self.name == "teacher" and (overrides or self.sweep):
            raise ConfigError("the teacher trains with cross-entropy alone: it takes no method hyperparameters")
        for name in overrides:
            if not any(name in m.hyperparameters for m in chosen):
                raise ConfigError(f"--{name.replace('_', '-')} does not apply to {', '.join(m.name for m in chosen)}")
        defaults = {method: dict(values) for method, values in self.method_defaults}
        return expand_members(chosen, self.seeds, dict(self.sweep), defaults, **overrides)


def _check_writable(flag: str, directory: pathlib.Path) -> None:
    """Create `directory` if needed and write a probe file there: permission bits alone say nothing to root."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {directory} is not writable ({error.strerror or error})") from error


_HELP = {
    "recipe": "a published training procedure's settings in one flag (cifar-kd: SGD 0.05 momentum 0.9, weight decay "
              "5e-4, batch 64, 240 epochs, x0.1 at 150/180/210, crop-flip; 0.01 for MobileNetV2/ShuffleNet "
              "students; char-lm, lm's default: Python's help text, causal_conv_128x5 -> causal_conv_32x2, Adam "
              "3e-3, batch 32, 10 epochs); any flag given overrides it",
    "optimizer": "adam (the tutorial's) or sgd (PyTorch's SGD with momentum)",
    "momentum": "SGD momentum (0: plain SGD)",
    "nesterov": "Nesterov momentum (SGD)",
    "weight_decay": "weight decay added to the gradient, as PyTorch's optimizers do it (not decoupled)",
    "schedule": "learning-rate schedule: constant, step (x --decay-factor at each of --milestones) or cosine (to 0)",
    "milestones": "comma-separated epochs at which the step schedule decays",
    "decay_factor": "the step schedule's factor per milestone",
    "warmup_epochs": "scale the learning rate up linearly over this many epochs",
    "normalize": NORMALIZE_HELP,
    "num_classes": "the class count (vocabulary size of token data); labels must lie in [0, N) (default: the data "
                   "set's own, or the largest label + 1)",
    "dataset": "cifar10, cifar100 (fine labels; from --data-dir or tensorflow-datasets), npz:PATH (x_train, "
               "y_train, x_test, y_test: uint8 or float [n, h, w(, c)] images, integer labels), or next-token data: "
               "text (Python's help text), text:PATH (a UTF-8 file, one token per character) or tokens:PATH (an .npy "
               "of token ids), cut into --window tokens",
    "window": "tokens per example of next-token data (inputs; the labels are the same window shifted by one)",
    "teacher": "the teacher network: deepnn (the tutorial's), or a zoo name such as resnet56, resnet32x4, wrn_40_2",
    "student": "the student network: lightnn (the tutorial's), or a zoo name such as resnet20, resnet8x4, wrn_16_2",
    "epochs": "training epochs of each member",
    "teacher_epochs": "training epochs of the teacher the students learn from (default: --epochs)",
    "learning_rate": "Adam learning rate",
    "batch_size": "images per step (split over the devices)",
    "methods": "comma-separated methods to train, CE among them for the comparison (default: every registered one)",
    "seeds": "comma-separated seeds, one member each (initial weights, data order, dropout); same seed = paired",
    "teacher_seed": "seed of the teacher the students learn from",
    "teacher_weights": "the students learn from this trained --teacher instead of training one: its PyTorch "
                       "state_dict (a .pth/.pt as RepDistiller and mdistiller release them, read with torch; or an "
                       ".npz of the same keys and arrays, which needs no torch)",
    "teacher_augment": "augmentation of the teacher's own training (default: --augment)",
    "export_weights": "write the trained teacher's weights to this .npz in PyTorch state_dict names (first seed), "
                      "which --teacher-weights reads",
    "data_source": "auto (local if --data-dir/$KDJAX_DATA_DIR is set, else tensorflow-datasets), local or tfds",
    "data_dir": "local copy of the --dataset: cifar-10-batches-bin/-py (cifar-100-binary/-python), their .tar.gz, "
                "a tfds data dir, or a folder holding one",
    "train_size": "use only the first N training images",
    "test_size": "use only the first N test images",
    "validation_size": "students train without the last N training images and report their accuracy on them "
                       "(pick hyperparameters there, not on the test set); the teacher still sees all",
    "labelled_size": "label transfer: the teacher trains on the first N training images; students take CE on those "
                     "N and the distillation term on every training image",
    "checkpoint_dir": "where Orbax checkpoints go, one folder per program and identity",
    "output_dir": "where run folders (config, members, summary, plots) go",
    "baseline": "also train the CE students of the same seeds (or reuse those a baseline command saved) and report "
                "each student's paired difference to them",
    "cache": "precompute the teacher's outputs once (--no-cache: run the teacher in every step)",
    "augment": "random augmentation (not in the tutorial; disables the teacher cache): flip mirrors images "
               "left-right, crop-flip also takes random 32x32 crops of the 4-pixel padded image; "
               "--augment alone means flip",
    "save_every_steps": "also checkpoint every N steps inside an epoch (0: only at epoch ends)",
    "log_every_steps": "where the output is no terminal, a progress line (step, images/s, time left) every N steps "
                       "(0: none; a terminal shows a progress bar)",
    "devices": "train data-parallel on the first N devices, the batch split between them (0: all devices)",
    "members_per_program": "at most N members per compiled program (0: as many as fit in memory)",
    "member_batching": "how members share a program: unroll (one after another), vmap, or auto (unroll on CPU)",
    "restart": "move this command's existing checkpoints aside and train from scratch",
    "distributed": "call jax.distributed.initialize() before anything else (one process per host; see README)",
}


def check_experiment(name: str) -> None:
    """Raise ConfigError unless `name` is an experiment."""
    if name not in EXPERIMENTS and name not in GROUPS:
        raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join([*EXPERIMENTS, *GROUPS])}")


def _items(text: str, what: str) -> list[str]:
    """The comma-separated items of `text`; an empty item (`0,,1`, a trailing comma) is an error."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"takes comma-separated {what} without empty items, got {text!r}")
    return items


def _integers(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in _items(text, what))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated {what}, got {text!r}") from None


def _seeds(text: str) -> tuple[int, ...]:
    return _integers(text, "integers")


def _epochs(text: str) -> tuple[int, ...]:
    return _integers(text, "epochs")


def _names(text: str) -> tuple[str, ...]:
    return tuple(_items(text, "names"))


def _grid_axis(text: str) -> tuple[str, tuple[float, ...]]:
    name, _, values = text.partition("=")
    try:
        parsed = tuple(float(v) for v in _items(values, "values"))
    except (ValueError, argparse.ArgumentTypeError):
        parsed = ()
    if not name or not parsed:
        raise argparse.ArgumentTypeError(f"takes NAME=V1,V2,..., got {text!r}")
    return name.strip().replace("-", "_"), parsed


def add_flags(parser: argparse.ArgumentParser, experiment: str) -> None:
    """One flag per config field, plus the hyperparameters of the experiment's methods; `--help` shows the
    defaults this experiment runs with (its default recipe's, where it has one)."""
    plain = ExperimentConfig()
    defaults = dataclasses.replace(plain, **recipe_values(DEFAULT_RECIPES.get(experiment), plain.student))
    skip = {"name", "hyperparameters", "sweep", "seeds", "methods", "normalization", "method_defaults"}
    if experiment != "teacher":
        skip.add("export_weights")
    if experiment == "teacher":
        skip |= {"student", "baseline", "teacher_epochs", "teacher_seed", "teacher_augment", "cache", "validation_size",
                 "teacher_weights"}
    parser.add_argument("--seeds", type=_seeds, default=defaults.seeds, help=f"{_HELP['seeds']} (default: 42)")
    if experiment in ("methods", "lm"):
        parser.add_argument("--methods", type=_names, default=(), help=_HELP["methods"])
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = _HELP[field.name]
        if "(default:" not in help_text:  # a default that is another flag says so itself
            help_text += f" (default: {default})"
        # Flags not given stay out of the namespace, so that a --recipe can supply them (see from_args).
        if field.name == "augment":
            parser.add_argument(flag, nargs="?", const="flip", default=argparse.SUPPRESS, help=help_text)
        elif field.name == "milestones":
            parser.add_argument(flag, type=_epochs, default=argparse.SUPPRESS, help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            kind = {"int | None": int, "str | None": str}.get(str(field.type), type(getattr(plain, field.name)))
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)
    config = dataclasses.replace(defaults, name=experiment)
    chosen = config.chosen_methods
    group = parser.add_argument_group("method hyperparameters (each sweepable with --sweep NAME=V1,V2,...)")
    recipe_weights = {method: dict(values) for method, values in defaults.method_defaults}
    for name in sorted({n for m in chosen for n in m.hyperparameters}):
        owners = ", ".join(f"{m.name} {recipe_weights.get(m.name, {}).get(name, m.hyperparameters[name]):g}"
                           for m in chosen if name in m.hyperparameters)
        group.add_argument("--" + name.replace("_", "-"), type=float, default=None, dest=f"hp_{name}",
                           help=f"default per method: {owners}")
    if chosen and any(m.hyperparameters for m in chosen):
        group.add_argument("--sweep", type=_grid_axis, action="append", default=[], metavar="NAME=V1,V2,...",
                           help="train every value (grids cross; each point with every seed); repeatable")


def from_args(name: str, args: argparse.Namespace) -> ExperimentConfig:
    """The config named `name` from parsed flags over `--recipe`'s values over the defaults."""
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig)
                             if hasattr(args, f.name) and f.name not in ("name", "sweep")}
    student = given.get("student", ExperimentConfig.student)
    given.setdefault("recipe", DEFAULT_RECIPES.get(name))
    values = recipe_values(given["recipe"], student) | given
    if given.get("teacher_weights") and "normalize" not in given:
        values["normalize"] = "auto"  # a released teacher's own normalisation, not the recipe's data statistics
    values["hyperparameters"] = tuple(sorted((key[3:], value) for key, value in vars(args).items()
                                             if key.startswith("hp_") and value is not None))
    values["sweep"] = tuple(getattr(args, "sweep", []) or ())
    axes = [axis for axis, _ in values["sweep"]]
    for axis in axes:
        if axes.count(axis) > 1:
            raise ConfigError(f"--sweep {axis} is given twice: give its values once (--sweep {axis}=V1,V2,...)")
        if axis in dict(values["hyperparameters"]):
            raise ConfigError(f"--{axis.replace('_', '-')} and --sweep {axis} both set {axis}: keep one")
    return ExperimentConfig(name=name, **values)


__all__ = ["EXPERIMENTS", "GROUPS", "LAYOUT_SETTINGS", "RECIPES", "ConfigError", "OneLineParser", "UsageError",
           "ExperimentConfig", "add_flags",
           "check_experiment", "from_args"]
