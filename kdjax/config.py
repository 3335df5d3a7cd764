"""What one experiment runs: the networks, the members, the training settings and the data, checked up front.

`ExperimentConfig` holds its parts — `training` (a `kdjax.train.Settings`) and `data` (a `DataSpec`) — rather
than copies of their fields. Every field is declared once (`kdjax.fields.setting`): the command line builds its
flags and help from the declarations (`kdjax.experiments.flags`) and `kdjax.identity` reads which fields decide
results. `flat()` / `from_flat` give the one-level form that flags, recipes and `config.json` use.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Any

from kdjax import methods
from kdjax.data import DATASETS
from kdjax.data.text import TEXT_DATASETS
from kdjax.data.normalization import CHOICES as NORMALIZE_CHOICES
from kdjax.data.normalization import IMAGE_FOLDERS
from kdjax.data.reading import ONLY_STREAMED
from kdjax.data.normalization import HELP as NORMALIZE_HELP
from kdjax.fields import SettingError, declared, require, setting
from kdjax.recipes import HELP as RECIPE_HELP
from kdjax.train import AUGMENTATIONS, Settings

TUTORIAL_STUDENTS = ("ce", "kd", "cosine", "hint")
# Experiments that train several methods' students from one teacher: name -> the methods, CE first.
GROUPS = {"all": TUTORIAL_STUDENTS,
          "methods": ("ce", *(m.name for m in methods.any_data() if m.name != "ce")),
          "lm": ("ce", "kd", "gkd")}
DEFAULT_RECIPES = {"lm": "char-lm"}  # experiment -> the recipe it runs unless --recipe names another
# Experiment name -> method trained; `teacher` trains DeepNN, the others LightNN.
EXPERIMENTS = {"teacher": "ce", "baseline": "ce", **{name: name for name in methods.METHODS if name != "ce"}}
DATA_SOURCES = ("auto", "local", "tfds")


class ConfigError(ValueError):
    """A setting that cannot work; the message names its flag and says why."""


def flag(field: str) -> str:
    """The command-line flag of setting `field`."""
    return "--" + field.replace("_", "-")


def as_config_error(error: SettingError) -> ConfigError:
    """`error` in the words of the command line: its flag, then why."""
    return ConfigError(error.render(flag))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data a run reads, how much of it, and how images are normalised. Checked when made."""

    dataset: str = setting("cifar10", "cifar10, cifar100 (fine labels; from --data-dir or tensorflow-datasets), "
                           "npz:PATH (x_train, y_train, x_test, y_test: uint8 or float [n, h, w(, c)] images, integer "
                           "labels), imagenet:DIR (image files: DIR/train/<class>/*, DIR/val/), tfds:NAME (a "
                           "tensorflow-datasets data set prepared as array_record in --data-dir, e.g. imagenet2012), "
                           "or next-token data: text (Python's help text), text:PATH (a UTF-8 file, one "
                           "token per character), bytes or bytes:PATH (the same, one token per UTF-8 byte: "
                           "vocabulary 256) or tokens:PATH (an .npy of token ids), cut into --window tokens",
                           identity="changed")
    window: int = setting(128, "tokens per example of next-token data (inputs; the labels are the same window "
                               "shifted by one)", identity="changed")
    num_classes: int | None = setting(None, "the class count (vocabulary size of token data); labels must lie in "
                                            "[0, N) (default: the data set's own, or the largest label + 1)",
                                      identity="changed")
    image_size: int = setting(224, "image folders and tfds images of many shapes: training images are random-"
                                   "resized crops of N pixels, validation images centre crops of N after resizing "
                                   "the shorter side to N * 256 / 224",
                              identity="changed")
    skip_bad_images: bool = setting(False, "image folders and tfds images: read an image that cannot be decoded "
                                           "as absent (no weight; counted) instead of stopping on it",
                                    identity="changed")
    normalize: str = setting("auto", NORMALIZE_HELP, identity="changed")
    # (mean, std) per channel: resolved when the data loads (`kdjax.run.prepare_data`), then recorded here
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = setting(None, "", identity="changed")
    data_source: str = setting("auto", "auto (local if --data-dir/$KDJAX_DATA_DIR is set, else tensorflow-datasets), "
                                       "local or tfds")
    data_dir: str | None = setting(None, "local copy of the --dataset: cifar-10-batches-bin/-py "
                                         "(cifar-100-binary/-python), their .tar.gz, a tfds data dir, or a folder "
                                         "holding one")
    train_size: int | None = setting(None, "use only the first N training images")
    test_size: int | None = setting(None, "use only the first N test images")
    validation_size: int | None = setting(None, "students train without the last N training images and report "
                                                "their accuracy on them (pick hyperparameters there, not on the test "
                                                "set); the teacher still sees all")
    labelled_size: int | None = setting(None, "label transfer: the teacher trains on the first N training images; "
                                              "students take CE on those N and the distillation term on every "
                                              "training image")

    def __post_init__(self):
        require([
            (self.dataset in DATASETS or self.dataset.startswith(("npz:", "tfds:", *(f"{p}:" for p in IMAGE_FOLDERS)))
             or self.sequence, "dataset",
             f": unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}, npz:PATH, imagenet:DIR, "
             "imagefolder:DIR, tfds:NAME, text, text:PATH, bytes, bytes:PATH or tokens:PATH"),
            (self.image_size >= 1, "image_size", f"must be >= 1, got {self.image_size}"),
            (self.window >= 1, "window", f"must be >= 1, got {self.window}"),
            (self.num_classes is None or self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}"),
            (self.normalize in NORMALIZE_CHOICES, "normalize",
             f"must be one of {', '.join(NORMALIZE_CHOICES)}, got {self.normalize!r}"),
            (self.data_source in DATA_SOURCES, "data_source",
             f"must be {', '.join(DATA_SOURCES[:-1])} or {DATA_SOURCES[-1]}, got {self.data_source!r}"),
            *((size is None or size > 0, name, f"must be > 0, got {size}")
              for name, size in (("train_size", self.train_size), ("test_size", self.test_size),
                                 ("validation_size", self.validation_size), ("labelled_size", self.labelled_size))),
        ])

    @property
    def sequence(self) -> bool:
        """Whether `dataset` is next-token data (text or a token array)."""
        return self.dataset in TEXT_DATASETS or self.dataset.startswith((*(f"{p}:" for p in TEXT_DATASETS), "tokens:"))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: `training` (the students' settings), `data`, and what sits around them. Defaults are the
    PyTorch tutorial's. Construct with parts (`ExperimentConfig(training=Settings(epochs=2))`) or flat
    (`ExperimentConfig.from_flat(epochs=2)`); `validate()` adds the checks that need files or the registry."""

    name: str = "all"
    teacher: str = setting("deepnn", "the teacher network: deepnn (the tutorial's), or a zoo name such as resnet56, "
                                     "resnet32x4, wrn_40_2", identity="changed")
    student: str = setting("lightnn", "the student network: lightnn (the tutorial's), or a zoo name such as "
                                      "resnet20, resnet8x4, wrn_16_2", identity="changed")
    recipe: str | None = setting(None, RECIPE_HELP, identity="changed")
    training: Settings = dataclasses.field(default_factory=Settings)
    teacher_epochs: int | None = setting(None, "training epochs of the teacher the students learn from (default: "
                                               "--epochs)")
    teacher_augment: str | None = setting(None, "augmentation of the teacher's own training (default: --augment)")
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    seeds: tuple[int, ...] = setting((42,), "comma-separated seeds, one member each (initial weights, data order, "
                                            "dropout); same seed = paired")
    teacher_seed: int = setting(42, "seed of the teacher the students learn from")
    teacher_weights: str | None = setting(None, "the students learn from this trained --teacher instead of training "
                                                "one: its PyTorch state_dict (a .pth/.pt as RepDistiller and "
                                                "mdistiller release them, read with torch; or an .npz of the same "
                                                "keys and arrays, which needs no torch), or a Hugging Face "
                                                "checkpoint folder (config.json + model.safetensors of a GPT-2 or "
                                                "Llama-layout model), whose config.json then sets the teacher and the "
                                                "vocabulary in place of --teacher")
    teacher_topk: str | None = setting(None, "the students of top-k methods (topk-kd) learn from this offline "
                                             "teacher: a folder of its top-k logits per token, written by python "
                                             "-m kdjax.offline for the same data; no teacher runs in the step")
    export_weights: str | None = setting(None, "write trained weights here: the teacher command's teacher (first "
                                               "seed) as an .npz in PyTorch state_dict names, or a Hugging Face "
                                               "folder for a transformer (both what --teacher-weights reads); a "
                                               "students' command's students, one per member in this folder",
                                         identity="never")
    methods: tuple[str, ...] = setting((), "comma-separated methods to train, CE among them for the comparison "
                                           "(default: every registered one)")
    hyperparameters: tuple[tuple[str, float], ...] = setting((), "")  # overrides of the methods' defaults
    method_defaults: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = setting((), "", identity="changed")
    sweep: tuple[tuple[str, tuple[float, ...]], ...] = setting((), "")  # hyperparameter grid, crossed with seeds
    checkpoint_dir: str = setting("checkpoints", "where Orbax checkpoints go, one folder per program and identity",
                                  identity="never")
    output_dir: str = setting("experiments/runs", "where run folders (config, members, summary, plots) go",
                              identity="never")
    cache: bool = setting(True, "precompute the teacher's outputs once (--no-cache: run the teacher in every step)",
                          identity="never")
    baseline: bool = setting(False, "also train the CE students of the same seeds (or reuse those a baseline "
                                    "command saved) and report each student's paired difference to them",
                             identity="changed")
    restart: bool = setting(False, "move this command's existing checkpoints aside and train from scratch",
                            identity="never")
    distributed: bool = setting(False, "call jax.distributed.initialize() before anything else (one process per "
                                       "host; see README)", identity="never")

    @classmethod
    def from_flat(cls, **values: Any) -> ExperimentConfig:
        """The config whose `flat()` form holds `values` (any subset; the rest default); ConfigError names the
        flag of a value that cannot work."""
        parts = {part: {f.name for f in flat_fields(kind)} for part, kind in PARTS.items()}
        in_parts = set().union(*parts.values())
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)} - in_parts
        if unknown:
            raise TypeError(f"ExperimentConfig has no setting(s) {', '.join(sorted(unknown))}")
        try:
            made = {part: PARTS[part](**{k: v for k, v in values.items() if k in names})
                    for part, names in parts.items()}
        except SettingError as error:
            raise as_config_error(error) from None
        return cls(**{k: v for k, v in values.items() if k not in in_parts}, **made)

    def flat(self) -> dict[str, Any]:
        """Every setting by name, the parts' fields inline: what `config.json` records and identities hash."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in PARTS:
                values |= {f.name: getattr(value, f.name) for f in flat_fields(PARTS[field.name])}
            else:
                values[field.name] = value
        return values

    def replace(self, **changes: Any) -> ExperimentConfig:
        """This config with `changes`, named as in `flat()`."""
        return ExperimentConfig.from_flat(**(self.flat() | changes))

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
        """The settings the teacher's program (`teacher=True`) or the students' programs train with."""
        if teacher:
            return dataclasses.replace(self.training, epochs=self.teacher_epochs or self.training.epochs,
                                       augment=self.teacher_augment or self.training.augment,
                                       normalization=self.data.normalization or Settings.normalization)
        return dataclasses.replace(self.training, normalization=self.data.normalization or Settings.normalization,
                                   labelled=None if self.name == "teacher" else self.data.labelled_size)

    def validate(self) -> ExperimentConfig:
        """Raise ConfigError on what cannot work, before anything expensive runs: the checks that need the
        method registry, the network zoo or the file system (the parts checked their own values when made)."""
        unknown = [name for name in self.methods if name not in methods.METHODS]
        if unknown:  # before the checks below, which look the methods up
            raise ConfigError(f"--methods: unknown method(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(methods.METHODS)}")
        check_experiment(self.name)
        from kdjax import hf, zoo

        for name, network in (("teacher", self.teacher), ("student", self.student)):
            if network not in zoo.names():
                raise ConfigError(f"{flag(name)}: unknown network {network!r}; choose from {', '.join(zoo.names())}")
        weights = pathlib.Path(self.teacher_weights).expanduser() if self.teacher_weights else None
        readers_of_labels = [m.name for m in self.chosen_methods if m.uses_labels]
        network_readers = [m.name for m in self.chosen_methods if m.needs_teacher_network]
        topk_readers = [m.name for m in self.chosen_methods if m.needs_teacher and not m.needs_teacher_network]
        try:
            require([
                (len(set(self.methods)) == len(self.methods), "methods",
                 f"has a repeated method: {','.join(self.methods)}"),
                (self.teacher_epochs is None or self.teacher_epochs >= 1, "teacher_epochs",
                 f"must be >= 1, got {self.teacher_epochs}"),
                (not (self.data.dataset.startswith(tuple(f"{p}:" for p in IMAGE_FOLDERS))
                      and self.training.data_loader == "resident"), "data_loader",
                 f"resident: {ONLY_STREAMED}", ("dataset",)),
                (self.teacher_augment in (None, *AUGMENTATIONS), "teacher_augment",
                 f"must be one of {', '.join(AUGMENTATIONS)}, got {self.teacher_augment!r}"),
                (self.export_weights is None or self.name != "teacher" or zoo.is_transformer(self.teacher)
                 or pathlib.Path(self.export_weights).suffix == ".npz", "export_weights",
                 f"{self.export_weights}: the weights are written as an .npz; name the file FILE.npz"),
                (self.export_weights is None or not pathlib.Path(self.export_weights).expanduser().is_file(),
                 "export_weights", f"{self.export_weights} is a file; the weights go to a folder of that name"),
                (weights is None or weights.is_file() or hf.is_checkpoint_folder(weights), "teacher_weights",
                 f"{self.teacher_weights} is neither a file nor a Hugging Face folder with {hf.CONFIG_FILE}"),
                (weights is None or weights.is_dir() or weights.suffix in (".pth", ".pt", ".npz"), "teacher_weights",
                 f"{self.teacher_weights}: expected a PyTorch .pth/.pt or an .npz of its state_dict"),
                (weights is None or weights.is_file() or self.data.sequence, "teacher_weights",
                 f"{self.teacher_weights} holds a language model; it teaches on next-token data "
                 "(--dataset tokens:FILE.npy, text:PATH or bytes:PATH)"),
                (len(set(self.seeds)) == len(self.seeds), "seeds", f"has a repeated seed: {self.seeds}"),
                (not (self.teacher_topk and network_readers), "teacher_topk",
                 f": {', '.join(network_readers)} run(s) the teacher network, which an offline top-k teacher is not; "
                 "train them in a command of their own"),
                (not (self.teacher_topk and self.teacher_weights), "teacher_topk",
                 " replaces the teacher: leave --teacher-weights out"),
                (bool(self.teacher_topk) or not topk_readers, "teacher_topk",
                 f": {', '.join(topk_readers)} read(s) an offline teacher's stored top-k; give --teacher-topk DIR "
                 "(python -m kdjax.offline writes one)"),
                (not (self.data.labelled_size and readers_of_labels), "labelled_size",
                 f": {', '.join(readers_of_labels)} reads every example's label, which unlabelled examples lack; "
                 "leave it out of partly labelled runs"),
            ])
            self.training.check_data(sequence=self.data.sequence)
        except SettingError as error:
            raise as_config_error(error) from None
        self.members()
        if self.teacher_topk:
            from kdjax import offline

            try:
                offline.read_manifest(self.teacher_topk)
            except offline.OfflineTeacherError as error:
                raise ConfigError(f"--teacher-topk {self.teacher_topk}: {error}") from None
        if self.data.data_dir is not None:
            path = pathlib.Path(self.data.data_dir).expanduser()
            if not path.exists():
                raise ConfigError(f"--data-dir {self.data.data_dir} does not exist")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"--data-dir {self.data.data_dir} is not readable")
        for name, directory in (("checkpoint_dir", self.checkpoint_dir), ("output_dir", self.output_dir),
                                *((("export_weights", pathlib.Path(self.export_weights).expanduser().parent),)
                                  if self.export_weights else ())):
            _check_writable(flag(name), pathlib.Path(directory))
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
                raise ConfigError(f"{flag(name)}{str(error)[len(name):]}") from None
        if self.name == "teacher" and (overrides or self.sweep):
            raise ConfigError("the teacher trains with cross-entropy alone: it takes no method hyperparameters")
        for name in overrides:
            if not any(name in m.hyperparameters for m in chosen):
                raise ConfigError(f"{flag(name)} does not apply to {', '.join(m.name for m in chosen)}")
        defaults = {method: dict(values) for method, values in self.method_defaults}
        try:
            return expand_members(chosen, self.seeds, dict(self.sweep), defaults, **overrides)
        except ValueError as error:
            raise ConfigError(str(error)) from None


PARTS = {"training": Settings, "data": DataSpec}


def flat_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The declared fields of `cls`, `ExperimentConfig`'s with its PARTS' inline: what `flat()` holds."""
    parts = (cls, *PARTS.values()) if cls is ExperimentConfig else (cls,)
    return tuple(f for part in parts for f in declared(part))


def flag_fields() -> tuple[dataclasses.Field, ...]:
    """The settings a command-line flag sets, each with its help text."""
    return tuple(f for f in flat_fields(ExperimentConfig) if f.metadata["help"])


def layout_settings() -> frozenset[str]:
    """The settings that decide where a run writes or how its members are laid out, not its results."""
    return frozenset(f.name for f in flat_fields(ExperimentConfig) if f.metadata["identity"] == "never")


def _check_writable(flag_name: str, directory: pathlib.Path) -> None:
    """Create `directory` if needed and write a probe file there: permission bits alone say nothing to root."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(f"{flag_name} {directory} is not writable ({error.strerror or error})") from error


def check_experiment(name: str) -> None:
    """Raise ConfigError unless `name` is an experiment."""
    if name not in EXPERIMENTS and name not in GROUPS:
        raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join([*EXPERIMENTS, *GROUPS])}")


__all__ = ["DEFAULT_RECIPES", "EXPERIMENTS", "GROUPS", "ConfigError", "DataSpec", "ExperimentConfig",
           "as_config_error", "check_experiment", "flag", "flag_fields", "flat_fields", "layout_settings"]
