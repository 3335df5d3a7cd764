"""What every experiment command shares: flags, data, the teacher and its cache, checkpoints, outputs."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import methods, zoo
from kdjax.checkpoint import CheckpointMismatchError, RunCheckpoints, saved_identity
from kdjax.config import (LAYOUT_SETTINGS, RECIPE_WARMUP, ConfigError, ExperimentConfig, OneLineParser, UsageError,
                          add_flags, check_experiment, from_args)
from kdjax.data import TUTORIAL_NORMALIZATION, DataNotFoundError, Dataset, NormalizationError, Split, load_dataset
from kdjax.data.normalization import choose as choose_normalization
from kdjax.tasks import CLASSIFICATION, NEXT_TOKEN
from kdjax.engine import (Member, MemberResult, Settings, TrainingDivergedError, evaluate_members, model_variables,
                        program_name, reads_teacher,
                        train_members, unrolls)
from kdjax.engine.memory import ProgramMemoryError
from kdjax.network import Network
from kdjax.parallel import batch_mesh
from kdjax.report import teacher_warnings, write_run
from kdjax.teacher import Teacher
from kdjax.train import TrainState, build_objective

FORMAT = 2  # checkpoint layout: params {"model", "adapter"}, stacked [members, ...]


def _member_key(member: Member) -> list:
    return [member.name, member.seed, [list(pair) for pair in member.hyperparameters]]


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


FINGERPRINT_CHARS = 16


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able settings, or of an array tree's bytes."""
    digest = hashlib.sha256()
    if isinstance(value, (dict, list, tuple, str)):
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    else:
        for leaf in jax.tree.leaves(value):
            digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def network(name: str, data: Dataset) -> Network:
    """The network `--teacher` or `--student` names, for `data`'s images and classes (built once per process)."""
    return _network(name, data.num_classes, data.input_shape)


@functools.cache
def _network(name: str, num_classes: int, input_shape: tuple[int, ...]) -> Network:
    try:
        return zoo.network(name, num_classes=num_classes, input_shape=input_shape)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_networks(config: ExperimentConfig, data: Dataset) -> None:
    """Raise ConfigError, before any training, if a network cannot take `data` or a student method cannot run
    between the two networks (a role one of them lacks, an adapter the shapes rule out)."""
    teacher = network(config.teacher, data) if config.name == "teacher" or config.needs_teacher else None
    if config.name == "teacher":
        return
    student = network(config.student, data)
    for method in config.chosen_methods:
        try:
            build_objective(method, student, teacher if method.needs_teacher else None)
        except ValueError as error:
            raise ConfigError(f"{method.name} between teacher {config.teacher} and student {config.student}: "
                              f"{error}") from None


def load_data(config: ExperimentConfig) -> tuple[ExperimentConfig, Dataset]:
    """The data set `config` names, cut to its sizes, and `config` with the images' normalisation resolved."""
    full = load_dataset(config.dataset, config.data_dir, source=config.data_source,  # type: ignore[arg-type]
                        window=config.window, num_classes=config.num_classes)
    for flag, size, available in (("--train-size", config.train_size, len(full.train)),
                                  ("--test-size", config.test_size, len(full.test))):
        if size is not None and size > available:
            raise ConfigError(f"{flag} {size:,} exceeds the {available:,} images of {full.origin}")
    data = full.subset(config.train_size, config.test_size)
    if config.batch_size > len(data.train):
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(data.train):,} training images")
    if config.labelled_size is not None and config.labelled_size > len(data.train):
        raise ConfigError(f"--labelled-size {config.labelled_size:,} exceeds the {len(data.train):,} training images")
    if config.validation_size is not None and config.validation_size > len(data.train) - config.batch_size:
        raise ConfigError(f"--validation-size {config.validation_size:,} leaves fewer than --batch-size "
                          f"{config.batch_size} of the {len(data.train):,} training images to train on")
    log(f"data: {data.origin}; train {len(data.train):,}, test {len(data.test):,}, {data.num_classes:,} "
        f"{'tokens in the vocabulary' if data.task is NEXT_TOKEN else 'classes'} (loaded in {data.load_seconds:.1f} s)")
    if data.task is CLASSIFICATION:
        released = released_normalization(config, data)
        try:
            normalization, line = choose_normalization(config.normalize, dataset=data.name,
                                                       train_images=full.train.inputs, used_images=data.train.inputs,
                                                       teacher_trained_with=released)
        except NormalizationError as error:
            raise ConfigError(str(error)) from None
        log(line + (" (the released teacher's)" if released and config.normalize == "auto" else ""))
        config = dataclasses.replace(config, normalization=None if normalization == TUTORIAL_NORMALIZATION
                                     else normalization)  # None: the default, as identities have always said
    return config, data


def released_normalization(config: ExperimentConfig, data: Dataset) -> str | None:
    """The named normalisation the `--teacher-weights` teacher was trained with, where it is known."""
    if not (config.teacher_weights and config.needs_teacher):
        return None
    if config.teacher in zoo.TUTORIAL:
        return "imagenet"  # the tutorial's transforms.Normalize
    if data.name in ("cifar10", "cifar100"):
        return data.name
    if config.normalize == "auto":
        log(f"--teacher-weights on {data.name}: the teacher's own normalisation is not known here; pass --normalize "
            "with the one it was trained with if it is not this data set's own statistics")
    return None


class Checkpoints:
    """Where each program's checkpoints live: `<checkpoint_dir>/<kind>/<identity hash>/`.

    The identity is what determines the program's trajectory (networks, members, optimiser,
    data, the teacher's weights), not its length, so a finished program extends to more
    epochs and one teacher serves every student that matches it.
    """

    def __init__(self, config: ExperimentConfig, data: Dataset, *, teacher: bool, labelled: int | None = None):
        self.root = pathlib.Path(config.checkpoint_dir)
        self.restart = config.restart
        augment = config.settings(teacher=teacher).augment
        self.shared = {"format": FORMAT, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                       "augment": {"none": False, "flip": True}.get(augment, augment),
                       "data": data.fingerprint}  # augment: the bool of identities written before crops existed
        if labelled:  # recorded only when set, so that identities written before the option stay valid
            self.shared["labelled"] = labelled
        if config.num_classes is not None:  # likewise: a stated class count sizes the network's head
            self.shared["classes"] = data.num_classes
        if data.train.inputs.dtype.kind == "f":  # float images are normalised too since this entry was added
            self.shared["float_inputs"] = True
        training, defaults = config.settings(teacher=teacher), Settings()
        for key in TRAINING_SETTINGS:  # likewise: only what differs from the tutorial's Adam and Normalize
            if getattr(training, key) != getattr(defaults, key):
                self.shared[key] = getattr(training, key)
        if training.schedule == "cosine":  # the schedule's length is part of the trajectory
            self.shared["epochs"] = training.epochs

    def for_members(self, kind: str, network: Network, teacher: str | None = None):
        def make(members: Sequence[Member]) -> RunCheckpoints:
            identity = {**self._identity(network, teacher), "members": [_member_key(m) for m in members]}
            directory = self._folder(kind) / fingerprint(identity)
            if self.restart and directory.exists() and jax.process_index() == 0:
                aside = directory.with_name(f"{directory.name}.restarted-{time.strftime('%Y%m%d-%H%M%S')}")
                directory.rename(aside)
                log(f"--restart: moved {directory} to {aside.name}")
            return RunCheckpoints(directory, identity)

        return make

    def _identity(self, network: Network, teacher: str | None) -> dict[str, Any]:
        return {**self.shared, "network": network.name, "teacher": teacher}

    def program_holding(self, kind: str, network: Network, member: Member) -> list[Member] | None:
        """The members of a saved program that trains `member` among others with these settings, if any.

        On CPU a member's trajectory is the same alone or in a program (`kdjax.engine`), so a
        teacher trained with `teacher --seeds 42,1,2` serves the students of `--teacher-seed 42`.
        """
        folder = self._folder(kind)
        expected = json.loads(json.dumps(self._identity(network, None)))
        for directory in sorted(folder.iterdir()) if folder.exists() else []:
            if "." in directory.name:  # set aside: restarted or corrupt
                continue
            identity = saved_identity(directory)
            if not identity or {k: v for k, v in identity.items() if k != "members"} != expected:
                continue
            keys = identity["members"]
            if (json.loads(json.dumps(_member_key(member))) in keys and len(keys) > 1
                    and all(key[0] == member.name for key in keys)):
                return [Member(member.method, seed, tuple((name, value) for name, value in pairs))
                        for _, seed, pairs in keys]
        return None

    def _folder(self, kind: str) -> pathlib.Path:
        folder = self.root / kind
        old = sorted(p.name for p in folder.glob("[0-9]*")  # step folders; a fingerprint may be all digits too
                     if p.is_dir() and p.name.isdigit() and len(p.name) != FINGERPRINT_CHARS) if folder.exists() else []
        if old:
            raise CheckpointMismatchError(
                f"{folder} holds checkpoints of an earlier kdjax version (steps {', '.join(old)}), which this version "
                f"cannot restore: move them away (e.g. mv {folder} {folder}-old) and rerun to train anew")
        return folder


def train_teacher(config: ExperimentConfig, data: Dataset, checkpoints: Checkpoints,
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


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch `state_dict` from a `.pth`/`.pt` (also mdistiller's `{"model": ...}`; needs torch) or an `.npz`."""
    path = pathlib.Path(path).expanduser()
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        try:
            import torch
        except ImportError:
            raise ConfigError(f"--teacher-weights {path}: reading a .pth needs torch (pip install torch), or save "
                              "the state_dict as an .npz: np.savez(FILE, **{k: v.numpy() for k, v in "
                              "state_dict.items()})") from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"--teacher-weights {path}: not a readable state_dict ({error})") from None
    for key in ("model", "state_dict"):  # mdistiller's and Lightning-style wrappers
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {key: value.numpy() for key, value in checkpoint.items() if hasattr(value, "numpy")}


def load_teacher(config: ExperimentConfig, data: Dataset) -> tuple[list[MemberResult], Any]:
    """The `--teacher-weights` teacher: (its result on the test split, its variables stacked as one member)."""
    from kdjax import convert

    teacher = network(config.teacher, data)
    state_dict = read_state_dict(config.teacher_weights)
    try:
        if config.teacher in zoo.TUTORIAL:
            variables = dict(convert.from_torch(state_dict))
        else:
            variables = dict(convert.zoo_from_torch(config.teacher, state_dict, num_classes=data.num_classes))
    except (ValueError, KeyError) as error:
        raise ConfigError(f"--teacher-weights {config.teacher_weights} for --teacher {config.teacher}: "
                          f"{str(error).splitlines()[0]}") from None
    params = variables.pop("params")
    states = TrainState(step=jnp.zeros((1,), jnp.int32), apply_fn=None, params={"model": _stacked(params)}, tx=None,
                        opt_state=None, model_state={"model": _stacked(variables)})
    objective = build_objective(methods.CE, teacher)
    settings = config.settings(teacher=True)
    mesh = batch_mesh(settings.devices or None)
    accuracy, loss = evaluate_members(objective, states, data.test, settings.batch_size, unrolls(settings, mesh),
                                      mesh, normalization=settings.normalization)
    parameters = sum(leaf.size for leaf in jax.tree.leaves(params))
    log(f"teacher: {config.teacher} from {config.teacher_weights}, test accuracy {accuracy[0]:.2f}%")
    result = MemberResult(Member.of(methods.CE, config.teacher_seed), teacher.name, parameters, float(accuracy[0]),
                          float(loss[0]), 0.0, 0.0, [])
    return [result], states


def export_teacher(config: ExperimentConfig, states: Any, result: MemberResult) -> None:
    """Write the first teacher member's weights to `--export-weights` as its PyTorch `state_dict` (.npz)."""
    from kdjax import convert

    params, state = model_variables(states)
    path = pathlib.Path(config.export_weights).expanduser()
    arrays = convert.state_dict(config.teacher, {"params": params, **state})
    partial = path.with_name(path.name + ".partial.npz")  # a crash leaves no half-written file under the name
    np.savez(partial, **arrays)
    partial.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log(f"teacher: seed {result.member.seed}, test accuracy {result.test_accuracy:.2f}%, weights in {path} "
        f"({len(arrays)} arrays, {path.stat().st_size:,} bytes, SHA-256 {digest})")


def _stacked(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], tree)


def teacher_data(config: ExperimentConfig, data: Dataset) -> Dataset:
    """What the teacher learns from: the labelled images alone under `--labelled-size`."""
    return data.subset(config.labelled_size) if config.labelled_size else data


def student_data(config: ExperimentConfig, data: Dataset) -> tuple[Dataset, Split | None]:
    """The students' training data and the split `--validation-size` holds out of it (or None)."""
    if not config.validation_size:
        return data, None
    keep = len(data.train) - config.validation_size
    return dataclasses.replace(data, train=data.train.rows(slice(0, keep))), data.train.rows(slice(keep, None))


def train_students(config: ExperimentConfig, data: Dataset, checkpoints: Checkpoints,
                   teacher_variables: Any, validation: Split | None = None) -> list[MemberResult]:
    """The students of `config`, trained or restored; with `validation`, each result carries its accuracy there.

    `teacher_variables` is the trained teacher's `(params, state)`, or None for students without one.
    """
    members = config.members()
    student = network(config.student, data)
    teacher = None if teacher_variables is None else Teacher(network(config.teacher, data), *teacher_variables)
    teacher_id = fingerprint(teacher_variables) if teacher_variables is not None else None

    def checkpoints_for(chunk: Sequence[Member]) -> RunCheckpoints:
        return checkpoints.for_members(program_name(chunk), student, teacher_id if reads_teacher(chunk) else None)(chunk)

    programs = train_members(members, student, data.train, data.test, config.settings(), checkpoints_for,
                             teacher=teacher, cache=config.cache, log=log, desc="student")
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


def with_view_accuracy(config: ExperimentConfig, data: Dataset, teacher: Sequence[MemberResult], states: Any
                       ) -> list[MemberResult]:
    """The teacher's results with its accuracy on the students' augmented views of the test images, logged.

    A teacher that never saw such views can be far worse on them than on clean images, and
    it is on those views that it teaches.
    """
    accuracy = accuracies(config, network(config.teacher, data), states, data.test, config.augment)
    log(f"teacher: {accuracy[0]:.2f}% on one {config.augment} view of each test image "
        f"({teacher[0].test_accuracy:.2f}% on the images themselves)")
    return [dataclasses.replace(r, view_accuracy=float(a)) for r, a in zip(teacher, accuracy)]


def machine_line() -> str:
    device = jax.devices()[0]
    return (f"{platform.node() or 'host'}: {platform.machine()}, {jax.device_count()} x {device.device_kind} "
            f"({jax.default_backend()}), jax {jax.__version__}")


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
    """Run experiment `name` (`teacher`, a student method, or `all`); returns the process exit code."""
    from kdjax.cpu import use_fast_cpu_kernels

    try:
        check_experiment(name)
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
            config, data = load_data(config)
        except ValueError as error:  # corrupt or unsafe files: the message names the file
            if isinstance(error, ConfigError):
                raise
            raise DataNotFoundError(str(error)) from error
        check_networks(config, data)  # traces the networks: after the backends' set-up above
        config = with_recipe_warmup(config, len(data.train))
        start = time.perf_counter()
        taught, (learners, validation) = teacher_data(config, data), student_data(config, data)
        teacher_checkpoints = Checkpoints(config, taught, teacher=True)
        student_checkpoints = Checkpoints(config, learners, teacher=False, labelled=config.labelled_size)
        score = data.task.score
        if name == "teacher":
            teacher_results, states = train_teacher(config, taught, teacher_checkpoints, config.seeds)
            students = []
            if config.export_weights and jax.process_index() == 0:
                export_teacher(config, states, teacher_results[0])
            for warning in teacher_warnings(teacher_results, [], score, data.num_classes):
                log(f"warning: {warning}")
        elif config.needs_teacher:
            if config.teacher_weights:
                teacher_results, states = load_teacher(config, data)
            else:
                teacher_results, states = train_teacher(config, taught, teacher_checkpoints)
            for warning in teacher_warnings(teacher_results, [], score, data.num_classes):
                log(f"warning: {warning}")
            if config.augment != "none":
                teacher_results = with_view_accuracy(config, data, teacher_results, states)
            students = train_students(config, learners, student_checkpoints,
                                      model_variables(states), validation)
            for warning in teacher_warnings(teacher_results, students, score, None):
                log(f"warning: {warning}")
        else:
            teacher_results = []
            students = train_students(config, learners, student_checkpoints, None, validation)
        outputs = {**dataclasses.asdict(config), "task": data.task.name, "num_classes": data.num_classes,
                   "train_examples": len(learners.train), "test_examples": len(data.test), "machine": machine_line(),
                   "seconds_this_invocation": time.perf_counter() - start}
        run_dir = pathlib.Path(config.output_dir) / f"{name}-{fingerprint(run_identity(config))}"
        if jax.process_index() == 0:
            write_run(run_dir, outputs, teacher_results, students)
        log(f"{name}: outputs in {run_dir}")
        return 0
    except (ConfigError, DataNotFoundError, CheckpointMismatchError, TrainingDivergedError,
            ProgramMemoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


# Settings added after runs were first written: left out of identities at their defaults, so those runs keep theirs.
TRAINING_SETTINGS = ("optimizer", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "decay_factor",
                     "warmup_epochs", "normalization")
LATER_SETTINGS = frozenset({"teacher", "student", "recipe", "normalize", "method_defaults", "dataset", "baseline", "window",
                            "num_classes", *TRAINING_SETTINGS})


def with_recipe_warmup(config: ExperimentConfig, train_examples: int) -> ExperimentConfig:
    """`config` with its recipe's warm-up (a fraction of training) in steps for `train_examples`, unless given."""
    if config.recipe not in RECIPE_WARMUP:
        return config
    method, name, fraction = RECIPE_WARMUP[config.recipe]
    if name in dict(config.hyperparameters) or name in dict(config.sweep):
        return config
    steps = round(fraction * config.epochs * -(-train_examples // config.batch_size))
    defaults = dict(config.method_defaults)
    defaults[method] = tuple(sorted({**dict(defaults.get(method, ())), name: float(steps)}.items()))
    return dataclasses.replace(config, method_defaults=tuple(sorted(defaults.items())))


def run_identity(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that decide a run's results (not where it writes, nor how it is laid out)."""
    defaults = ExperimentConfig()
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in LAYOUT_SETTINGS
            and not (key in LATER_SETTINGS and value == getattr(defaults, key))}
