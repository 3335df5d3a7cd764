"""A run as a function: `train_and_evaluate(config, data)` trains (or restores, or converts) the teacher, trains
the students, writes the run's outputs and returns its results. Every `python -m kdjax.experiments.<name>` parses
its flags into an `ExperimentConfig` and calls it; tests and scripts pass their own in-memory `Dataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import hf, methods, offline, zoo
from kdjax.checkpoint import RunCheckpoints
from kdjax.config import ConfigError, ExperimentConfig, as_config_error
from kdjax.data import TUTORIAL_NORMALIZATION, Dataset, NormalizationError, Split, load_dataset
from kdjax.data.images import HostImages
from kdjax.data.reading import ONLY_STREAMED, host_decoded
from kdjax.data.normalization import choose as choose_normalization
from kdjax.engine import (Member, MemberResult, evaluate_members, model_variables, program_name, reads_teacher,
                          train_members, unrolls)
from kdjax.fields import SettingError
from kdjax.identity import FINGERPRINT_CHARS, Checkpoints, fingerprint, run_identity
from kdjax.network import Network
from kdjax.parallel import batch_mesh, check_batch_size, check_layout
from kdjax.recipes import RECIPE_WARMUP
from kdjax.released import export_students, export_teacher, load_teacher
from kdjax.report import write_run
from kdjax.tables import teacher_warnings
from kdjax.tasks import CLASSIFICATION, NEXT_TOKEN
from kdjax.teacher import CachedTeacher, Teacher, TeacherLike
from kdjax.train import build_objective


def log(message: str) -> None:
    """Print `message` on the first process only."""
    if jax.process_index() == 0:
        print(message, flush=True)


@dataclasses.dataclass
class RunResult:
    """What `train_and_evaluate` returns: the config as run (normalisation resolved), the teacher's results, the
    students', and the folder the outputs went to."""

    config: ExperimentConfig
    teacher: list[MemberResult]
    students: list[MemberResult]
    run_dir: pathlib.Path


def train_and_evaluate(config: ExperimentConfig, data: Dataset | None = None, *,
                       log: Callable[[str], None] = log) -> RunResult:
    """Run `config` on `data` (default: the data set `config.data.dataset` names, loaded here).

    Raises:
      ConfigError: settings that cannot work with this data or these networks, before any training.
      DataNotFoundError, TrainingDivergedError, ProgramMemoryError, CheckpointMismatchError: as their names say.
    """
    check_devices(config)
    config, data = prepare_data(config, data if data is not None else load(config), log)
    check_networks(config, data)  # traces the networks: after the backends' set-up
    config = with_recipe_warmup(config, len(data.train))
    start = time.perf_counter()
    taught, (learners, validation) = teacher_data(config, data), student_data(config, data)
    teacher_checkpoints = Checkpoints(config, taught, teacher=True)
    student_checkpoints = Checkpoints(config, learners, teacher=False, labelled=config.data.labelled_size)
    score, name = data.task.score, config.name
    if name == "teacher":
        teacher_results, states = train_teacher(config, taught, teacher_checkpoints, log, config.seeds)
        students = []
        if config.export_weights and jax.process_index() == 0:
            export_teacher(config, states, teacher_results[0], data.num_classes, log)
        for warning in teacher_warnings(teacher_results, [], score, data.num_classes):
            log(f"warning: {warning}")
    elif config.teacher_topk:
        teacher_results = []
        students = train_students(config, learners, student_checkpoints, offline_teacher(config, learners, log), log,
                                  validation)
    elif config.needs_teacher:
        if config.teacher_weights:
            teacher_results, states = load_teacher(config, data, log, teacher_network(config, data))
        else:
            teacher_results, states = train_teacher(config, taught, teacher_checkpoints, log)
        for warning in teacher_warnings(teacher_results, [], score, data.num_classes):
            log(f"warning: {warning}")
        if config.training.augment != "none":
            teacher_results = with_view_accuracy(config, data, teacher_results, states, log)
        variables = model_variables(states)
        teacher = Teacher(teacher_network(config, data), *variables), fingerprint(variables)
        students = train_students(config, learners, student_checkpoints, teacher, log, validation)
        for warning in teacher_warnings(teacher_results, students, score, None):
            log(f"warning: {warning}")
    else:
        teacher_results = []
        students = train_students(config, learners, student_checkpoints, None, log, validation)
    outputs = {**config.flat(), "task": data.task.name, "num_classes": data.num_classes,
               "train_examples": len(learners.train), "test_examples": len(data.test), "machine": machine_line(),
               "seconds_this_invocation": time.perf_counter() - start}
    run_dir = pathlib.Path(config.output_dir) / f"{name}-{fingerprint(run_identity(config))}"
    if jax.process_index() == 0:
        write_run(run_dir, outputs, teacher_results, students)
    log(f"{name}: outputs in {run_dir}")
    return RunResult(config, teacher_results, students, run_dir)


def load(config: ExperimentConfig) -> Dataset:
    """The data set `config` names, from its data dir or tensorflow-datasets."""
    return load_dataset(config.data.dataset, config.data.data_dir, source=config.data.data_source,  # type: ignore[arg-type]
                        window=config.data.window, num_classes=config.data.num_classes or released_vocabulary(config),
                        image_size=config.data.image_size, skip_bad_images=config.data.skip_bad_images)


def network(name: str, data: Dataset) -> Network:
    """The network `--teacher` or `--student` names, for `data`'s images and classes (built once per process)."""
    return _network(name, data.num_classes, data.input_shape)


@functools.cache
def _network(name: str, num_classes: int, input_shape: tuple[int, ...]) -> Network:
    try:
        return zoo.network(name, num_classes=num_classes, input_shape=input_shape)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def teacher_network(config: ExperimentConfig, data: Dataset) -> Network:
    """The teacher: the Hugging Face folder `--teacher-weights` names (its config.json), else `--teacher`."""
    if config.teacher_weights and hf.is_checkpoint_folder(config.teacher_weights):
        return _released_network(str(pathlib.Path(config.teacher_weights).expanduser()), data.input_shape)
    return network(config.teacher, data)


@functools.cache
def _released_network(folder: str, input_shape: tuple[int, ...]) -> Network:
    try:
        transformer = hf.read_config(folder)
        return zoo.transformer_network(transformer, time=input_shape[0])  # named by layout and size
    except ValueError as error:
        raise ConfigError(f"--teacher-weights {folder}: {error}") from None


def released_vocabulary(config: ExperimentConfig) -> int | None:
    """The vocabulary of the teacher that `--teacher-weights` (a Hugging Face folder) or `--teacher-topk` names,
    which the token data must use."""
    try:
        if config.teacher_topk:
            return int(offline.read_manifest(config.teacher_topk)["vocab_size"])
        if config.needs_teacher and config.teacher_weights and hf.is_checkpoint_folder(config.teacher_weights):
            return hf.read_config(config.teacher_weights).vocab_size
    except ValueError as error:
        raise ConfigError(f"--teacher-{'topk' if config.teacher_topk else 'weights'}: {error}") from None
    return None


def check_devices(config: ExperimentConfig) -> None:
    """Raise ConfigError if the devices cannot hold `config`'s layout (the batch's split, fsdp on one device)."""
    try:
        mesh = batch_mesh(config.training.devices or None)
        check_batch_size(config.training.batch_size, mesh)
        check_layout(config.training.parameter_sharding, mesh)
    except ValueError as error:
        raise ConfigError(str(error).replace("parameter sharding", "--parameter-sharding")) from None


def check_networks(config: ExperimentConfig, data: Dataset) -> None:
    """Raise ConfigError, before any training, if a network cannot take `data` or a student method cannot run
    between the two networks (a role one of them lacks, an adapter the shapes rule out)."""
    teacher = teacher_network(config, data) if config.name == "teacher" or config.needs_teacher else None
    if config.name == "teacher":
        return
    student = network(config.student, data)
    for method in config.chosen_methods:
        try:
            build_objective(method, student, teacher if method.needs_teacher else None)
        except ValueError as error:
            raise ConfigError(f"{method.name} between teacher {config.teacher} and student {config.student}: "
                              f"{error}") from None


def prepare_data(config: ExperimentConfig, full: Dataset, log: Callable[[str], None]
                 ) -> tuple[ExperimentConfig, Dataset]:
    """`full` cut to `config`'s sizes, and `config` with the images' normalisation resolved (on all of `full`'s
    training images, or the subset's where asked)."""
    if config.data.num_classes is not None and config.data.num_classes != full.num_classes:
        raise ConfigError(f"--num-classes {config.data.num_classes}: the data set has {full.num_classes} classes")
    vocabulary = released_vocabulary(config)
    if vocabulary is not None and full.num_classes != vocabulary:
        flag = f"--teacher-topk {config.teacher_topk}" if config.teacher_topk else \
            f"--teacher-weights {config.teacher_weights}"
        raise ConfigError(f"{flag} predicts {vocabulary:,} tokens, but the data have {full.num_classes:,}: tokenise "
                          "the data with the teacher's tokenizer")
    for flag, size, available in (("--train-size", config.data.train_size, len(full.train)),
                                  ("--test-size", config.data.test_size, len(full.test))):
        if size is not None and size > available:
            raise ConfigError(f"{flag} {size:,} exceeds the {available:,} images of {full.origin}")
    data = full.subset(config.data.train_size, config.data.test_size)
    try:
        config.training.check_data(sequence=data.task is NEXT_TOKEN, examples=len(data.train))
    except SettingError as error:
        raise as_config_error(error) from None
    if config.training.data_loader == "resident" and host_decoded(data.train):
        raise ConfigError(f"--data-loader resident: {ONLY_STREAMED}")
    labelled, validation = config.data.labelled_size, config.data.validation_size
    batch_size = config.training.batch_size
    if labelled is not None and labelled > len(data.train):
        raise ConfigError(f"--labelled-size {labelled:,} exceeds the {len(data.train):,} training images")
    if validation is not None and validation > len(data.train) - batch_size:
        raise ConfigError(f"--validation-size {validation:,} leaves fewer than --batch-size {batch_size} of the "
                          f"{len(data.train):,} training images to train on")
    log(f"data: {data.origin}; train {len(data.train):,}, test {len(data.test):,}, {data.num_classes:,} "
        f"{'tokens in the vocabulary' if data.task is NEXT_TOKEN else 'classes'} (loaded in {data.load_seconds:.1f} s)")
    if data.task is CLASSIFICATION:
        released = released_normalization(config, data, log)
        try:
            normalization, line = choose_normalization(config.data.normalize, dataset=data.name,
                                                       train_images=full.train.inputs, used_images=data.train.inputs,
                                                       teacher_trained_with=released)
        except NormalizationError as error:
            raise ConfigError(str(error)) from None
        log(line + (" (the released teacher's)" if released and config.data.normalize == "auto" else ""))
        config = config.replace(normalization=None if normalization == TUTORIAL_NORMALIZATION
                                     else normalization)  # None: the default, as identities have always said
    return config, data


def evaluation_view(split: Split) -> Split:
    """`split` as evaluation reads it: images held out of training take the validation view (resize and centre
    crop), not the training one (random crops)."""
    if isinstance(split.inputs, HostImages) and split.inputs.random_crop:
        return dataclasses.replace(split, inputs=dataclasses.replace(split.inputs, random_crop=False))
    return split


def released_normalization(config: ExperimentConfig, data: Dataset, log: Callable[[str], None]) -> str | None:
    """The named normalisation the `--teacher-weights` teacher was trained with, where it is known."""
    if not (config.teacher_weights and config.needs_teacher):
        return None
    if config.teacher in zoo.TUTORIAL or config.teacher in zoo.imagenet.NETWORKS:
        return "imagenet"  # the tutorial's transforms.Normalize; torchvision's ImageNet training
    if data.name in ("cifar10", "cifar100"):
        return data.name
    if config.data.normalize == "auto":
        log(f"--teacher-weights on {data.name}: the teacher's own normalisation is not known here; pass --normalize "
            "with the one it was trained with if it is not this data set's own statistics")
    return None


def train_teacher(config: ExperimentConfig, data: Dataset, checkpoints: Checkpoints, log: Callable[[str], None],
                  seeds: Sequence[int] | None = None) -> tuple[list[MemberResult], Any]:
    """The teacher members (default: `--teacher-seed`), trained or restored; returns (results, stacked states).

    The default teacher comes from a saved program that holds it among other seeds, when
    there is one (`Checkpoints.program_holding`); otherwise it trains alone.
    """
    teacher = network(config.teacher, data)
    members = [Member.of(methods.CE, seed) for seed in (seeds or [config.teacher_seed])]
    wanted = members[0]
    if seeds is None and jax.default_backend() == "cpu":
        members = checkpoints.program_holding("teacher", teacher, wanted) or members
        if len(members) > 1:
            log(f"teacher: seed {wanted.seed} from the saved program of seeds "
                f"{', '.join(str(m.seed) for m in members)}")
    programs = train_members(members, teacher, data.train, data.test, config.settings(teacher=True),
                             checkpoints.for_members("teacher", teacher), log=log, desc="teacher")
    results = [result for program in programs for result in program.results]
    states = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *(program.states for program in programs))
    if seeds is None and len(members) > 1:
        index = members.index(wanted)
        return [results[index]], jax.tree.map(lambda leaf: leaf[index:index + 1], states)
    return results, states


def offline_teacher(config: ExperimentConfig, data: Dataset, log: Callable[[str], None]
                    ) -> tuple[CachedTeacher, str]:
    """The `--teacher-topk` teacher for `data`'s training split, and its fingerprint (the split's and its files')."""
    try:
        teacher, manifest = offline.read(config.teacher_topk, data.train)
    except offline.OfflineTeacherError as error:
        raise ConfigError(f"--teacher-topk {config.teacher_topk}: {error}") from None
    log(f"teacher: offline top-{manifest['k']} ({manifest['dtype']}) of {manifest['teacher'] or 'a teacher'}, "
        f"{manifest['bytes_per_token']:.1f} bytes per token, from {config.teacher_topk}")
    return teacher, manifest["sha256"][:FINGERPRINT_CHARS]  # the stored values' own hash


def teacher_data(config: ExperimentConfig, data: Dataset) -> Dataset:
    """What the teacher learns from: the labelled images alone under `--labelled-size`."""
    return data.subset(config.data.labelled_size) if config.data.labelled_size else data


def student_data(config: ExperimentConfig, data: Dataset) -> tuple[Dataset, Split | None]:
    """The students' training data and the split `--validation-size` holds out of it (or None)."""
    if not config.data.validation_size:
        return data, None
    keep = len(data.train) - config.data.validation_size
    return (dataclasses.replace(data, train=data.train.rows(slice(0, keep))),
            evaluation_view(data.train.rows(slice(keep, None))))


def train_students(config: ExperimentConfig, data: Dataset, checkpoints: Checkpoints,
                   teacher: tuple[TeacherLike, str] | None, log: Callable[[str], None],
                   validation: Split | None = None) -> list[MemberResult]:
    """The students of `config`, trained or restored; with `validation`, each result carries its accuracy there.

    `teacher` is (the teacher, the fingerprint its students' checkpoints are keyed by), or None for students
    without one.
    """
    members = config.members()
    student = network(config.student, data)
    teacher, teacher_id = teacher or (None, None)

    def checkpoints_for(chunk: Sequence[Member]) -> RunCheckpoints:
        return checkpoints.for_members(program_name(chunk), student, teacher_id if reads_teacher(chunk) else None)(chunk)

    programs = train_members(members, student, data.train, data.test, config.settings(), checkpoints_for,
                             teacher=teacher, cache=config.cache, log=log, desc="student")
    if config.export_weights and jax.process_index() == 0:
        export_students(config, config.student, data.num_classes, programs, log)
    if validation is None:
        return [result for program in programs for result in program.results]
    results = []
    for program in programs:
        accuracy = accuracies(config, student, program.states, validation)
        results += [dataclasses.replace(r, validation_accuracy=float(a)) for r, a in zip(program.results, accuracy)]
    return results


def accuracies(config: ExperimentConfig, network: Network, states: Any, split: Split, augment: str = "none"
               ) -> np.ndarray:
    """`[members]` accuracy (percent) of stacked train `states` on `split`, or on one `augment` view of each."""
    settings = config.settings()
    mesh = batch_mesh(settings.devices or None)
    objective = build_objective(methods.CE, network)
    accuracy, _ = evaluate_members(objective, states, split, settings.batch_size, unrolls(settings, mesh),
                                   mesh, augment=augment, normalization=settings.normalization)
    return accuracy


def with_view_accuracy(config: ExperimentConfig, data: Dataset, teacher: Sequence[MemberResult], states: Any,
                       log: Callable[[str], None]) -> list[MemberResult]:
    """The teacher's results with its accuracy on the students' augmented views of the test images, logged.

    A teacher that never saw such views can be far worse on them than on clean images, and
    it is on those views that it teaches.
    """
    accuracy = accuracies(config, teacher_network(config, data), states, data.test, config.training.augment)
    log(f"teacher: {accuracy[0]:.2f}% on one {config.training.augment} view of each test image "
        f"({teacher[0].test_accuracy:.2f}% on the images themselves)")
    return [dataclasses.replace(r, view_accuracy=float(a)) for r, a in zip(teacher, accuracy)]


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"{platform.node() or 'host'}: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
            f"({jax.default_backend()}), jax {jax.__version__}")


def with_recipe_warmup(config: ExperimentConfig, train_examples: int) -> ExperimentConfig:
    """`config` with its recipe's warm-up (a fraction of training) in steps for `train_examples`, unless given."""
    if config.recipe not in RECIPE_WARMUP:
        return config
    method, name, fraction = RECIPE_WARMUP[config.recipe]
    if name in dict(config.hyperparameters) or name in dict(config.sweep):
        return config
    steps = round(fraction * config.training.epochs * -(-train_examples // config.training.batch_size))
    defaults = dict(config.method_defaults)
    defaults[method] = tuple(sorted({**dict(defaults.get(method, ())), name: float(steps)}.items()))
    return dataclasses.replace(config, method_defaults=tuple(sorted(defaults.items())))


