"""The one training loop: N >= 1 members in one compiled program, data-parallel on a device mesh.

A member is one run: a method, a seed and the method's hyperparameters (`Member`). Members
of one method train together: their states are stacked along a leading member axis and a
single jitted step advances all of them, sharing the split on the device, the teacher (or
its output cache) and one compilation. Each member's batch is split over the mesh's
`"batch"` axis, so a program is members x data parallelism. A single run is a one-member
program; the teacher is trained by the same loop.

A member's trajectory depends only on its own settings: its initial weights, batch order
and dropout derive from its seed (`init_keys`), and members never mix. On CPU the members
are laid out one after another in the program (`member_batching="unroll"`), which makes a
member's arithmetic the same whatever else shares its program; on accelerators they are
batched with `jax.vmap` (`"vmap"`), where XLA may sum in a different order per program
size (docs/engine.md has the measured spread).

Checkpoints (`kdjax.checkpoint`) are written every epoch end and every `save_every_steps`
steps; a rerun resumes from the newest one bitwise, and a finished program extends to more
epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from kdjax import memory, methods
from kdjax.methods import Method
from kdjax.checkpoint import Position, RunCheckpoints
from kdjax.data import ResidentLoader, Split
from kdjax.data.normalization import TUTORIAL_NORMALIZATION, Normalization
from kdjax.data.pipeline import Batch, augment_batch, epoch_order, gather_batch, num_batches
from kdjax.network import Network
from kdjax.optimizers import make_optimizer
from kdjax.progress import EpochProgress
from kdjax.parallel import batch_mesh, batch_sharding, check_batch_size, replicate
from kdjax.tasks import NEXT_TOKEN, Task
from kdjax.teacher import CachedTeacher, Teacher, TeacherLike, cache_off_reason, cache_outputs
from kdjax.train import (Objective, TrainState, build_objective, create_train_state, eval_step, init_keys,
                         train_step)

PROGRESS_EVERY = 10  # steps between progress-bar refreshes (each one waits for the device)
AUGMENTATIONS = ("none", "flip", "crop-flip")
CROP_PADDING = 4  # pixels, as the CIFAR recipes' RandomCrop(32, padding=4)
MEMBER_BATCHING = ("auto", "unroll", "vmap")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class InterruptGuard:
    """While active, Ctrl-C (SIGINT) or SIGTERM only sets `requested`: the loop saves where it stands at the next
    step boundary, then raises KeyboardInterrupt. A second signal acts at once. Off the main thread it is inert."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self.requested and kind is None:  # asked for after the last step: stop before the next program
            raise KeyboardInterrupt


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One run: `method` from `seed` with every hyperparameter resolved. Members are equal when their method's
    name, seed and hyperparameters are (as checkpoint identities key them)."""

    method: Method
    seed: int
    hyperparameters: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):  # a registered name, resolved once, here
            object.__setattr__(self, "method", methods.method_of(self.method))

    def _key(self) -> tuple:
        return self.method.name, self.seed, self.hyperparameters

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Member) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def of(cls, method: Method | str, seed: int, **overrides: float) -> "Member":
        """The member with `method`'s defaults (a `Method`, or a registered name), `overrides` applied (checked)."""
        method = methods.method_of(method)
        resolved = method.resolve(overrides)
        return cls(method, int(seed), tuple(sorted((k, float(v)) for k, v in resolved.items())))

    @property
    def name(self) -> str:
        """The method's name."""
        return self.method.name

    @property
    def hp(self) -> dict[str, float]:
        return dict(self.hyperparameters)

    @property
    def label(self) -> str:
        setting = "".join(f"{name}={value:g}, " for name, value in self.hyperparameters)
        return f"{self.name}[{setting}seed={self.seed}]"


def expand_members(chosen: Sequence[Method | str], seeds: Sequence[int], grid: Mapping[str, Sequence[float]],
                   defaults: Mapping[str, Mapping[str, float]] | None = None, **overrides: float) -> list[Member]:
    """Every (method, grid point, seed); a grid axis or override applies to the methods that have it.

    `defaults` (method name -> hyperparameters) replace a method's own defaults, under the
    overrides and the grid (a recipe's weights). A grid axis no listed method has is an
    error. Order: method, grid point, seed.
    """
    chosen = [methods.method_of(method) for method in chosen]
    for name in grid:
        if not any(name in m.hyperparameters for m in chosen):
            raise ValueError(f"none of {', '.join(m.name for m in chosen)} has a hyperparameter {name!r}")
    members = []
    for method in chosen:
        axes = {name: values for name, values in grid.items() if name in method.hyperparameters}
        fixed = {**(defaults or {}).get(method.name, {}),
                 **{name: value for name, value in overrides.items() if name in method.hyperparameters}}
        for point in itertools.product(*axes.values()):
            setting = {**fixed, **dict(zip(axes, point))}
            members.extend(Member.of(method, seed, **setting) for seed in seeds)
    return members


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every member of a program shares. Defaults are the PyTorch tutorial's."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3  # the base rate of the schedule
    optimizer: str = "adam"  # adam (PyTorch's defaults) | sgd; see kdjax.optimizers
    momentum: float = 0.9  # sgd only (0: plain SGD)
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # PyTorch's coupled form: added to the gradient
    schedule: str = "constant"  # constant | step (x decay_factor at each milestone epoch) | cosine (to 0 at `epochs`)
    milestones: tuple[int, ...] = ()  # epochs, for the step schedule
    decay_factor: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up of the rate over this many epochs
    normalization: Normalization = TUTORIAL_NORMALIZATION  # (mean, std) per channel of [0, 1] pixels (uint8 / 255)
    save_every_steps: int = 200  # checkpoint cadence inside an epoch, besides every epoch end
    augment: str = "none"  # none | flip | crop-flip (4-pixel padded crops, then flips); per (seed, epoch, batch)
    devices: int = 0  # data-parallel over the first N devices (0: all)
    member_batching: str = "auto"  # auto: unroll on CPU, vmap elsewhere
    members_per_program: int = 0  # 0: as many as fit in the device's memory
    labelled: int | None = None  # only the first N examples' labels count (CE); None: all
    log_every_steps: int = 100  # a progress line every N steps where the log is no terminal (0: none)


@dataclasses.dataclass
class MemberResult:
    member: Member
    network: str
    parameters: int  # trainable, adapter included
    test_accuracy: float  # percent, after the last epoch
    test_loss: float  # mean cross-entropy, nats
    train_seconds: float  # the program's training wall time over all epochs, all invocations (shared by its members)
    images_per_second: float  # this member's training images / train_seconds
    history: list[dict[str, float]]
    validation_accuracy: float | None = None  # percent, on a split held out of the training images, if any
    view_accuracy: float | None = None  # percent, a teacher's on its students' augmented test views
    program: str | None = None  # the methods of the program it trained in ("kd+dkd": they share its wall time)


@dataclasses.dataclass
class ProgramResult:
    results: list[MemberResult]
    states: TrainState = dataclasses.field(repr=False)  # stacked, `[members, ...]` per leaf
    trained_steps: int  # steps this invocation ran (0: restored a finished program)


def map_members(fn: Callable, unroll: bool, *, indexed: bool = False) -> Callable:
    """`fn` over a leading member axis of every argument: `jax.vmap`, or one call per member, stacked.

    With `indexed` (unrolled only), `fn` also gets the member's position first: `fn(i, *args)`.
    """
    if not unroll:
        if indexed:
            raise ValueError("map_members: indexed calls need unroll=True")
        return jax.vmap(fn)

    def one_by_one(*stacked):
        count = jax.tree.leaves(stacked)[0].shape[0]
        outs = []
        for i in range(count):
            args = jax.tree.map(lambda leaf: leaf[i], stacked)
            if outs:  # member i starts once member i - 1 is done: one member's working set in cache at a time
                args, outs[-1] = jax.lax.optimization_barrier((args, outs[-1]))
            outs.append(fn(i, *args) if indexed else fn(*args))
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return one_by_one


def unrolls(settings: Settings, mesh: Mesh) -> bool:
    if settings.member_batching not in MEMBER_BATCHING:
        raise ValueError(f"member_batching must be one of {MEMBER_BATCHING}, got {settings.member_batching!r}")
    if settings.member_batching == "auto":
        return mesh.devices.flat[0].platform == "cpu"
    return settings.member_batching == "unroll"


@dataclasses.dataclass(frozen=True, eq=False)
class ProgramSpec:
    """The static part of a program step."""

    objective: Objective
    batch_size: int
    num_examples: int
    augment: str
    unroll: bool
    mesh: Mesh
    labelled: int | None = None  # examples at index >= labelled have no label for the CE term
    normalization: Normalization = TUTORIAL_NORMALIZATION
    # Unrolled programs only: member i's objective when members' methods differ (empty: `objective` for all), and
    # the first member with member i's seed, whose batch and teacher forward member i shares (empty: none shared).
    objectives: tuple[Objective, ...] = ()
    data_groups: tuple[int, ...] = ()


def program_step(states: TrainState, orders: jax.Array, epoch: jax.Array, index: jax.Array,
                 data: dict[str, jax.Array], teacher: TeacherLike | None, data_keys: jax.Array, dropout_keys: jax.Array,
                 hyperparameters: Mapping[str, jax.Array], *, spec: ProgramSpec) -> tuple[TrainState, dict]:
    """Advance every member by batch `index` of its own epoch order.

    Unrolled members of one data group (`spec.data_groups`: the same seed) gather, augment
    and run the teacher on their batch once between them; members may then differ in method
    (`spec.objectives`).

    Args:
      states: stacked train states, `[members, ...]` per leaf.
      orders: `[members, num_batches * batch_size]` int32, each member's epoch order.
      epoch, index: int32 scalars, the epoch and the batch within it.
      data: the whole split's `Split.arrays()` (inputs, labels[, mask]), `[n, ...]`; shared.
      teacher: the `Teacher` or its `CachedTeacher` (`kdjax.teacher`), or None when no member reads one.
      data_keys, dropout_keys: `[members]` keys; hyperparameters: name -> `[members]` float32.

    Returns:
      New states and per-member metrics `[members]` (`loss`, `ce_loss`, `aux_loss`, `correct`, `finite`).
    """
    gather = functools.partial(gather_batch, batch_size=spec.batch_size, num_examples=spec.num_examples,
                               normalization=spec.normalization)
    sharded = spec.mesh.devices.size > 1

    def prepare(order, data_key, reads):
        """The batch of `order` and, if `reads` names roles, the teacher's outputs for it."""
        batch = augment_views(gather(data, order, index), spec.augment, data_key, epoch, index,
                              spec.normalization)
        if spec.labelled is not None:
            batch = batch | {"labelled": batch["index"] < spec.labelled}
        if sharded:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding(spec.mesh))
        return batch, None if reads is None else teacher.outputs(batch, reads)

    if not spec.unroll:
        method = spec.objective.method

        def one_member(state, order, data_key, dropout_key, hp):
            batch, outputs = prepare(order, data_key, method.reads if method.needs_teacher else None)
            return train_step(state, batch, dropout_key, outputs, hp, objective=spec.objective)

        return jax.vmap(one_member)(states, orders, data_keys, dropout_keys, hyperparameters)

    count = orders.shape[0]
    objectives = spec.objectives or (spec.objective,) * count
    groups = spec.data_groups or tuple(range(count))
    prepared = {}  # data group -> (batch, teacher outputs), made by the group's first member

    def member_step(i, state, order, data_key, dropout_key, hp):
        method = objectives[i].method
        if groups[i] not in prepared:
            sharing = [objectives[j].method for j in range(count) if groups[j] == groups[i]]
            reads = tuple(dict.fromkeys(r for m in sharing if m.needs_teacher for r in m.reads))
            prepared[groups[i]] = prepare(order, data_key, reads if any(m.needs_teacher for m in sharing) else None)
        batch, outputs = prepared[groups[i]]
        own = {name: hp[name] for name in method.hyperparameters}  # others' names hold NaN for this member
        return train_step(state, batch, dropout_key, outputs, own, objective=objectives[i])

    return map_members(member_step, True, indexed=True)(states, orders, data_keys, dropout_keys, hyperparameters)


@functools.lru_cache(maxsize=32)
def _jitted_step(spec: ProgramSpec) -> Callable:
    return jax.jit(functools.partial(program_step, spec=spec), donate_argnums=(0,))


def augment_views(batch: Batch, augment: str, key: jax.Array, epoch: jax.Array | int, index: jax.Array | int,
                  normalization: Normalization = TUTORIAL_NORMALIZATION) -> Batch:
    """`batch` as `augment` (one of `AUGMENTATIONS`) shows it at (epoch, batch index) under data key `key`."""
    if augment == "none":
        return batch
    return augment_batch(batch, key, epoch, index, crop=CROP_PADDING * (augment == "crop-flip"),
                         normalization=normalization)


@functools.lru_cache(maxsize=32)
def _jitted_eval(network: Network, unroll: bool, augment: str, normalization: Normalization) -> Callable:
    def evaluate(params, model_state, batch, key, index):
        batch = augment_views(batch, augment, key, 0, index, normalization)
        return map_members(lambda p, s: eval_step(p, s, batch, network=network), unroll)(params, model_state)

    return jax.jit(evaluate)


@jax.jit
def first_nonfinite(first_bad: jax.Array, finite: jax.Array, step: jax.Array) -> jax.Array:
    """Per member, the first step whose loss or model state was not finite (-1: none yet)."""
    return jnp.where((first_bad < 0) & ~finite, step, first_bad)


def init_states(objective: Objective, seeds: Sequence[int], optimizer: float | optax.GradientTransformation
                ) -> TrainState:
    """Train states `[members, ...]`, member i initialised exactly as a one-member run with `seeds[i]`.

    `optimizer`: an Optax transformation, or a learning rate for Adam.
    """
    tx = optax.adam(optimizer) if isinstance(optimizer, (int, float)) else optimizer
    states = [create_train_state(objective, init_keys(seed)[0], tx=tx) for seed in seeds]
    per_leaf = zip(*(jax.tree.leaves(state) for state in states))  # each state holds its own (equal) optimiser
    return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(leaves) for leaves in per_leaf])


def evaluate_members(objective: Objective, states: TrainState, split: Split, batch_size: int, unroll: bool,
                     mesh: Mesh | None = None, *, augment: str = "none", key: jax.Array | None = None,
                     normalization: Normalization = TUTORIAL_NORMALIZATION) -> tuple[np.ndarray, np.ndarray]:
    """Per-member (accuracy in percent, mean cross-entropy), each `[members]`, on all of `split`.

    `states` are stacked; the model runs in inference mode on its running averages.

    With `augment`, on one augmented view of each image, drawn from `key` (default `key(0)`)
    as a training epoch 0 would draw it.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    normalization = tuple(map(tuple, normalization))
    evaluate = _jitted_eval(objective.student, unroll, augment, normalization)
    key = jax.random.key(0) if key is None else key
    loader = ResidentLoader(split, batch_size, jax.random.key(0), shuffle=False, mesh=mesh,
                            normalization=normalization)
    totals = None
    for index, batch in enumerate(loader.epoch(0)):
        result = evaluate(states.params["model"], states.model_state["model"], batch, key, jnp.int32(index))
        totals = result if totals is None else jax.tree.map(jnp.add, totals, result)
    totals = jax.device_get(totals)
    count = np.maximum(totals["count"], 1)
    return 100.0 * totals["correct"] / count, totals["loss_sum"] / count


def score_text(task: Task, accuracy: np.ndarray, loss: np.ndarray) -> str:
    """The epoch log's test figures: accuracy, or bits per token and token accuracy, as a value or a range."""
    def span(values: np.ndarray, digits: int, unit: str = "") -> str:
        low, high = float(np.min(values)), float(np.max(values))
        return f"{low:.{digits}f}{unit}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}{unit}"

    if task is NEXT_TOKEN:
        return f"test {span(np.asarray(loss) / np.log(2), 3)} bits/token, token accuracy {span(accuracy, 2, '%')}"
    return f"test accuracy {span(accuracy, 2, '%')}"


def model_variables(states: TrainState, member: int = 0) -> tuple[Any, Any]:
    """Member `member`'s model `(params, state)` out of stacked train states: what a teacher runs on."""
    return jax.tree.map(lambda leaf: leaf[member], (states.params["model"], states.model_state["model"]))


def stack_hyperparameters(members: Sequence[Member]) -> dict[str, jax.Array]:
    """name -> `[members]` float32, over every member's names (NaN where a member's method has no such name)."""
    names = dict.fromkeys(name for m in members for name in m.hp)
    return {name: jnp.asarray([m.hp.get(name, np.nan) for m in members], jnp.float32) for name in names}


def data_groups(members: Sequence[Member]) -> tuple[int, ...]:
    """Per member, the index of the first member with its seed: they see the same batches."""
    first = {}
    return tuple(first.setdefault(m.seed, i) for i, m in enumerate(members))


def reads_teacher(members: Sequence[Member]) -> bool:
    """Whether any member's method reads the teacher."""
    return any(m.method.needs_teacher for m in members)


def program_name(members: Sequence[Member]) -> str:
    """The methods of a program, in first-seen order, joined by `+`."""
    return "+".join(dict.fromkeys(m.name for m in members))


TeacherSource = Callable[[], TeacherLike]  # the teacher or its cache; called only when a step must run


def train_program(
    members: Sequence[Member], objectives: Mapping[Method, Objective], train_split: Split, test_split: Split,
    settings: Settings, checkpoints: RunCheckpoints, *, teacher_source: TeacherSource | None = None,
    log: Callable[[str], None] = print, desc: str = "train",
) -> ProgramResult:
    """Train `members` together for `settings.epochs`, resuming from `checkpoints`.

    `objectives` maps each member's method to its objective. Members of different methods
    share a program only when it is unrolled and their parameter trees match (no adapter);
    members with one seed then share each batch and teacher forward. `teacher_source`
    supplies the `Teacher` or its `CachedTeacher` when a step must run (not for a finished
    program). A NaN/Inf loss in any member stops the program with `TrainingDivergedError`,
    naming the member and step; the last good checkpoint is kept.
    """
    missing = sorted({m.name for m in members if m.method not in objectives})
    if missing:
        raise ValueError(f"no objective for method(s) {missing} of the program's members")
    per_member = tuple(objectives[m.method] for m in members)
    objective, mixed = per_member[0], len({m.method for m in members}) > 1
    needs_teacher = any(o.method.needs_teacher for o in per_member)
    if needs_teacher and teacher_source is None:
        raise ValueError(f"{program_name(members)} needs a teacher")
    mesh = batch_mesh(settings.devices or None)
    check_batch_size(settings.batch_size, mesh)
    n, batch_size = len(train_split), settings.batch_size
    if train_split.task is NEXT_TOKEN and settings.augment != "none":
        raise ValueError(f"augment {settings.augment!r} flips and crops images; token windows take augment 'none'")
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the {n} training examples")
    unroll = unrolls(settings, mesh)
    if mixed and (not unroll or any(o.adapter is not None for o in per_member)):
        raise ValueError(f"methods {program_name(members)} cannot share a program: that needs unrolled members "
                         "(--member-batching unroll) and methods without adapters")
    count = len(members)
    keys = [init_keys(m.seed) for m in members]
    data_keys = jnp.stack([k[1] for k in keys])
    dropout_keys = jnp.stack([k[2] for k in keys])
    states = init_states(objective, [m.seed for m in members], make_optimizer(settings, num_batches(n, batch_size)))
    parameters = sum(leaf[0].size for leaf in jax.tree.leaves(states.params))

    position, history, running, partial_seconds = Position(0, 0), [[] for _ in members], np.zeros(count), 0.0
    restored = checkpoints.restore_latest(states, dropout_keys, until_epoch=settings.epochs)
    if restored is not None:
        states, dropout_keys, position, meta = restored
        history, running = meta["history"], np.asarray(meta.get("running", running))
        partial_seconds = meta.get("seconds", 0.0)
        if position == Position(settings.epochs, 0):
            log(f"{desc}: already trained for {settings.epochs} epochs (step {int(states.step[0])}) in "
                f"{checkpoints.directory}")
        else:
            log(f"{desc}: resuming at epoch {position.epoch + 1}, batch {position.batch} "
                f"(step {int(states.step[0])}) from {checkpoints.directory}")

    trained = 0
    if position < Position(settings.epochs, 0):
        teacher_arg = teacher_source() if needs_teacher else None
        spec = ProgramSpec(objective, batch_size, n, settings.augment, unroll, mesh,
                           settings.labelled, settings.normalization, per_member if mixed else (),
                           data_groups(members) if unroll else ())
        states, dropout_keys, trained = _run_epochs(
            spec, members, states, dropout_keys, data_keys, teacher_arg, train_split, test_split, settings,
            checkpoints, position, history, running, partial_seconds, log, desc)

    results = []
    for i, member in enumerate(members):
        final = history[i][-1]
        seconds = sum(row["seconds"] for row in history[i])
        results.append(MemberResult(member, objective.student.name, parameters, final["test_accuracy"],
                                    final["test_loss"], seconds, len(history[i]) * n / seconds if seconds else 0.0,
                                    history[i], program=program_name(members)))
    return ProgramResult(results, states, trained)


def _run_epochs(spec: ProgramSpec, members, states, dropout_keys, data_keys, teacher_arg, train_split: Split,
                test_split: Split, settings: Settings, checkpoints: RunCheckpoints, position: Position,
                history: list, running: np.ndarray, partial_seconds: float, log, desc: str):
    mesh, count, n = spec.mesh, len(members), spec.num_examples
    batches = num_batches(n, spec.batch_size)
    step = _jitted_step(spec)
    states, dropout_keys, data_keys, teacher_arg = replicate((states, dropout_keys, data_keys, teacher_arg), mesh)
    hyperparameters = replicate(stack_hyperparameters(members), mesh)
    data = replicate(train_split.arrays(), mesh)
    task, positions = train_split.task, int(np.prod(train_split.labels.shape[1:]))  # tokens per example, or 1
    orders_for = jax.jit(jax.vmap(lambda key, epoch: epoch_order(key, epoch, n, spec.batch_size), in_axes=(0, None)))
    first_bad = jnp.full((count,), -1, jnp.int32)
    trained = 0

    methods_of = [m.name for m in members]

    def loss_text(losses: np.ndarray) -> str:
        """The mean loss, per method where methods differ: their objectives are not comparable."""
        names = list(dict.fromkeys(methods_of))
        if len(names) == 1:
            return f"{float(np.mean(losses)):.4f}"
        return ", ".join(f"{name} {float(np.mean([v for v, m in zip(losses, methods_of) if m == name])):.4f}"
                         for name in names)

    def check_finite(bar) -> None:
        bad = np.asarray(first_bad)
        if (bad >= 0).any():
            bar.close()
            names = "; ".join(f"{members[i].label} at step {bad[i] + 1}" for i in np.flatnonzero(bad >= 0))
            raise TrainingDivergedError(
                f"{desc}: loss or model state became NaN/Inf for {names}; stopped, keeping the last good checkpoint "
                f"in {checkpoints.directory}. Lower --learning-rate or drop that setting.")

    def save(pos: Position, loss_sums, bar) -> None:
        check_finite(bar)
        checkpoints.save(states, dropout_keys, pos, {"history": history, "running": np.asarray(loss_sums).tolist(),
                                                     "seconds": seconds_so_far}, step=int(states.step[0]))

    with InterruptGuard() as interrupt:
        for epoch in range(position.epoch, settings.epochs):
            start_batch = position.batch if epoch == position.epoch else 0
            loss_sums = jnp.asarray(running if start_batch else np.zeros(count), jnp.float32)
            seconds_before = partial_seconds if start_batch else 0.0  # spent on this epoch by an interrupted run
            orders = orders_for(data_keys, epoch)
            bar = EpochProgress(f"{desc} {epoch + 1}/{settings.epochs}", batches, start_batch, task.examples,
                                log=log, log_every=settings.log_every_steps, enabled=jax.process_index() == 0)
            epoch_start, examples_done = time.perf_counter(), 0
            seconds_so_far = seconds_before
            for index in range(start_batch, batches):
                if interrupt.requested:  # between steps, so the checkpoint and the running sums agree
                    bar.close()
                    seconds_so_far = seconds_before + time.perf_counter() - epoch_start
                    if index > start_batch:
                        save(Position(epoch, index), loss_sums, bar)
                        log(f"{desc}: interrupted; saved epoch {epoch + 1}, batch {index} in {checkpoints.directory}")
                    raise KeyboardInterrupt
                states, metrics = step(states, orders, np.int32(epoch), np.int32(index), data, teacher_arg,
                                       data_keys, dropout_keys, hyperparameters)
                loss_sums = loss_sums + metrics["loss"]
                first_bad = first_nonfinite(first_bad, metrics["finite"], states.step - 1)
                examples_done += min(spec.batch_size, n - index * spec.batch_size) * positions
                trained += 1
                done = index + 1
                if index == start_batch:  # the rate leaves compilation out
                    jax.block_until_ready(loss_sums)
                    bar.first_step_done(done, count * examples_done)
                if done % PROGRESS_EVERY == 0 or done % max(settings.log_every_steps, 1) == 0 or done == batches:
                    check_finite(bar)
                    bar.update(done, count * examples_done, loss_text(np.asarray(loss_sums) / done))
                if settings.save_every_steps and done % settings.save_every_steps == 0 and done < batches:
                    seconds_so_far = seconds_before + time.perf_counter() - epoch_start
                    save(Position(epoch, done), loss_sums, bar)
            jax.block_until_ready(states)
            elapsed = time.perf_counter() - epoch_start
            bar.close()
            check_finite(bar)
            accuracy, test_loss = evaluate_members(spec.objective, states, test_split, spec.batch_size,
                                                   spec.unroll, mesh, normalization=spec.normalization)
            train_loss = np.asarray(loss_sums) / batches
            for i in range(count):
                history[i].append({"epoch": epoch + 1, "train_loss": float(train_loss[i]),
                                   "test_accuracy": float(accuracy[i]), "test_loss": float(test_loss[i]),
                                   "seconds": seconds_before + elapsed,
                                   "images_per_second": examples_done / elapsed})
            seconds_so_far = 0.0
            save(Position(epoch + 1, 0), np.zeros(count), bar)
            members_text = "" if count == 1 else f" over {count} members"
            log(f"{desc} epoch {epoch + 1}/{settings.epochs}: loss {loss_text(train_loss)}, "
                f"{score_text(task, accuracy, test_loss)}{members_text}, {elapsed:.1f} s, "
                f"{count * examples_done / elapsed:,.0f} {task.examples}/s")
    return states, dropout_keys, trained


def member_bytes(objective: Objective, train_split: Split, settings: Settings, teacher_arg: TeacherLike | None,
                 mesh: Mesh) -> tuple[int, int]:
    """(bytes per member, shared bytes) of `objective`'s program step, from XLA's analysis of one- and two-member
    compiles (`memory.measure`)."""
    spec = ProgramSpec(objective, settings.batch_size, len(train_split), settings.augment,
                       unrolls(settings, mesh), mesh, settings.labelled, settings.normalization)
    step = jax.jit(functools.partial(program_step, spec=spec))
    # Shapes only: a restored teacher's arrays live on one device, which a program over a wider mesh cannot take
    # as they are (the step itself gets them replicated onto its mesh).
    teacher_arg = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), teacher_arg)
    data = {name: jax.ShapeDtypeStruct(array.shape, array.dtype) for name, array in train_split.arrays().items()}
    order_length = num_batches(len(train_split), settings.batch_size) * settings.batch_size

    def state_shapes(count: int) -> TrainState:
        tx = make_optimizer(settings, num_batches(len(train_split), settings.batch_size))
        return jax.eval_shape(lambda: init_states(objective, list(range(count)), tx))

    def compiled_bytes(count: int) -> int | None:
        keys = jax.eval_shape(lambda: jnp.stack([jax.random.key(i) for i in range(count)]))
        hp = {name: jax.ShapeDtypeStruct((count,), jnp.float32) for name in objective.method.hyperparameters}
        orders = jax.ShapeDtypeStruct((count, order_length), jnp.int32)
        lowered = step.lower(state_shapes(count), orders, np.int32(0), np.int32(0), data, teacher_arg,
                             keys, keys, hp)
        analysis = lowered.compile().memory_analysis()
        if analysis is None:
            return None
        return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes

    return memory.measure(compiled_bytes, (data, teacher_arg), memory.nbytes(state_shapes(1)))


def plan_program_size(objectives: Mapping[Method, Objective], members: Sequence[Member], train_split: Split,
                      settings: Settings, teacher_arg: TeacherLike | None) -> memory.MemoryPlan:
    """How many of `members` one program holds on this device.

    A program that mixes methods is planned by the most demanding of them (the largest
    per-member and shared bytes), each measured with its own teacher forward per member, so
    the plan errs on the side of smaller programs.
    """
    mesh = batch_mesh(settings.devices or None)
    measured = [member_bytes(objectives[method], train_split, settings, teacher_arg, mesh)
                for method in dict.fromkeys(member.method for member in members)]
    local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    capacity = memory.device_capacity_bytes(local)
    if jax.process_count() > 1:  # every process must cut the members into the same programs
        from jax.experimental import multihost_utils

        mib = multihost_utils.process_allgather(np.int32(capacity // 2**20))  # int32: JAX's default width
        capacity = int(np.min(mib)) * 2**20
    return memory.plan_memory(max(p for p, _ in measured), max(s for _, s in measured), capacity)


def programs(members: Sequence[Member], *, share_teacher_forward: bool = False) -> list[list[Member]]:
    """`members` grouped into programs, in first-seen order: by method, except that with
    `share_teacher_forward` every method that reads the teacher and has no adapter goes into
    one program, where members with the same seed share each step's teacher forward."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        method = member.method
        shared = share_teacher_forward and method.needs_teacher and method.adapter is None
        groups.setdefault("" if shared else method.name, []).append(member)
    return list(groups.values())


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` in consecutive pieces of at most `size`."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def train_members(
    members: Sequence[Member], student: Network, train_split: Split, test_split: Split, settings: Settings,
    checkpoints_for: Callable[[Sequence[Member]], RunCheckpoints], *, teacher: Teacher | None = None,
    cache: bool = True, log: Callable[[str], None] = print, desc: str = "train",
) -> list[ProgramResult]:
    """Train every member: one program per method, split into programs that fit the device's memory.

    `checkpoints_for(members)` gives each program its checkpoints; `settings.members_per_program`
    caps a program's size by hand. `teacher` serves the members whose methods read one: its
    outputs are computed once over `train_split` where a cache cannot change the results
    (`kdjax.teacher.cache_off_reason`; never with `cache=False`); otherwise it runs inside every
    step, and unrolled members of the methods that read it share one program, so that members
    with one seed pay for one teacher forward per step between them.
    """
    objectives = {method: build_objective(method, student, teacher.network if teacher and method.needs_teacher
                                          else None) for method in dict.fromkeys(m.method for m in members)}
    reads = tuple(dict.fromkeys(r for o in objectives.values() if o.method.needs_teacher for r in o.method.reads))
    if any(o.method.needs_teacher for o in objectives.values()) and teacher is None:
        raise ValueError(f"{', '.join(m.name for m in objectives if m.needs_teacher)} need(s) a teacher")
    mesh = batch_mesh(settings.devices or None)
    source, share = None, False
    if teacher is not None and reads:
        reason = cache_off_reason(teacher, train_split, reads, augment=settings.augment, wanted=cache,
                                  capacity_bytes=memory.device_capacity_bytes(mesh.devices.flat[0]))
        if reason:
            log(f"teacher cache off ({reason}): the teacher runs inside every {desc} step")
        share = reason is not None and unrolls(settings, mesh)
        source = functools.cache(lambda: teacher if reason else _cached(teacher, train_split, reads, settings, log))
    results = []
    for group in programs(members, share_teacher_forward=share):
        size = settings.members_per_program or len(group)
        if len(group) > 1 and not settings.members_per_program:
            plan = plan_program_size(objectives, group, train_split, settings,
                                     source() if source and reads_teacher(group) else None)
            log(f"{desc} {program_name(group)}: {plan.describe()}")
            size = plan.fits
        for chunk in chunks(group, size):
            label = desc if len(members) == 1 else f"{desc} {program_name(chunk)}"
            checkpoints = checkpoints_for(chunk)
            try:
                results.append(train_program(chunk, objectives, train_split, test_split, settings, checkpoints,
                                             teacher_source=source, log=log, desc=label))
            finally:
                checkpoints.close()
    return results


def _cached(teacher: Teacher, split: Split, reads: Sequence[str], settings: Settings,
            log: Callable[[str], None]) -> CachedTeacher:
    start = time.perf_counter()
    cached = jax.block_until_ready(cache_outputs(teacher, split, reads, normalization=settings.normalization))
    log(f"teacher cache: {', '.join(sorted(reads))} for {len(split):,} {split.task.examples} in "
        f"{time.perf_counter() - start:.1f} s")
    return cached
