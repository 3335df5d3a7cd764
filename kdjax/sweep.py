"""Many students in one compiled program: `jax.vmap` over stacked train states, keys and loss weights.

A sweep member is one student run: an objective, a seed and its loss weights. Members of
one objective train together: their states are stacked along a leading member axis and a
single jitted step advances all of them, so they share one data pass (the split lives on
the device once), one teacher-output cache and one compilation. The loss weights are
traced arrays (`LossWeights`), so a temperature x weight grid compiles once.

Each member keeps its own trajectory: its initial weights, batch order and dropout derive
from its seed exactly as in a single run (`kdjax.loop.init_keys`), and vmap never mixes
members, so a member ends where the same configuration trained alone ends, up to float
rounding. Members with the same seed share initial weights and batch order, which makes
comparisons between them paired.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.training.train_state import TrainState
from tqdm.auto import tqdm

from kdjax.checkpoint import Position, RunCheckpoints
from kdjax.data import Cifar10, ResidentLoader, Split
from kdjax.data.pipeline import epoch_order, gather_batch, num_batches
from kdjax.loop import TrainingDivergedError, first_nonfinite, init_keys
from kdjax.models import DeepNN
from kdjax.train import LossConfig, LossWeights, Objective, apply_step, create_train_state, eval_step

# Which objectives each sweepable hyperparameter changes; other members are not multiplied by it.
SWEEPABLE: dict[str, tuple[Objective, ...]] = {
    "temperature": ("kd",),
    "ce_weight": ("kd", "cosine", "hint"),
    "aux_weight": ("kd", "cosine", "hint"),
}


class SweepMemoryError(MemoryError):
    """Not even one member fits in the device's memory."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One student run of a sweep."""

    objective: Objective
    seed: int
    ce_weight: float = 0.75
    aux_weight: float = 0.25
    temperature: float = 2.0

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.ce_weight, self.aux_weight, self.temperature)

    @property
    def setting(self) -> dict[str, float]:
        """The hyperparameters that matter for this objective (CE members have none)."""
        if self.objective == "ce":
            return {}
        names = [name for name, objectives in SWEEPABLE.items() if self.objective in objectives]
        return {name: getattr(self, name) for name in names}


def expand_members(
    objectives: Sequence[Objective], seeds: Sequence[int], grid: dict[str, Sequence[float]], **defaults: float
) -> list[Member]:
    """Every (objective, grid point, seed), the grid applied only to objectives it affects.

    `defaults` (ce_weight, aux_weight, temperature) fill the hyperparameters the grid leaves
    alone. Order: objective, then grid point, then seed.
    """
    unknown = set(grid) - set(SWEEPABLE)
    if unknown:
        raise ValueError(f"cannot sweep {sorted(unknown)}; sweepable: {', '.join(SWEEPABLE)}")
    members = []
    for objective in objectives:
        axes = {name: values for name, values in grid.items() if objective in SWEEPABLE[name]}
        for point in itertools.product(*axes.values()):
            setting = dict(zip(axes, point))
            members.extend(Member(objective, seed, **{**defaults, **setting}) for seed in seeds)
    return members


def stack_weights(members: Sequence[Member]) -> LossWeights:
    """`LossWeights` of float32 `[members]` arrays."""
    return LossWeights(*(jnp.asarray(values, jnp.float32) for values in zip(*(m.weights for m in members))))


def init_stacked_state(model: nn.Module, seeds: Sequence[int], *, learning_rate: float) -> TrainState:
    """Train states `[members, ...]`, member i initialised exactly as a single run with `seeds[i]`."""
    init = jnp.stack([init_keys(seed)[0] for seed in seeds])
    return jax.vmap(lambda key: create_train_state(model, key, learning_rate=learning_rate))(init)


def sweep_step(
    states: TrainState,
    orders: jax.Array,
    index: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    teacher: Any,
    dropout_keys: jax.Array,
    weights: LossWeights,
    *,
    objective: Objective,
    batch_size: int,
    num_examples: int,
    cached: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Advance every member by one step of batch `index` of its own epoch order.

    Args:
      states: stacked train states, `[members, ...]` per leaf.
      orders: `[members, num_batches * batch_size]` int32, each member's epoch order.
      index: scalar int32, the batch within the epoch.
      images, labels: the whole split, `[n, 32, 32, 3]` (uint8 or normalised float32), `[n]`; shared.
      teacher: the teacher-output cache (`cached`) or the teacher's params; shared, None for `ce`.
      dropout_keys: `[members]` keys; weights: `LossWeights` of `[members]` arrays.

    Returns:
      New states and per-member metrics `[members]` (`loss`, `ce_loss`, `aux_loss`, `correct`).
    """
    config = LossConfig(objective)
    gather = functools.partial(gather_batch, batch_size=batch_size, num_examples=num_examples)

    def one_member(state, order, key, member_weights):
        batch = gather(images, labels, order, index)
        teacher_outputs = None
        if config.needs_teacher:
            if cached:
                teacher_outputs = jax.tree.map(lambda field: field[batch["index"]], teacher)
            else:
                teacher_outputs = DeepNN().apply({"params": teacher}, batch["image"], train=False)
        return apply_step(state, batch, key, teacher_outputs, config, member_weights)

    return jax.vmap(one_member)(states, orders, dropout_keys, weights)


@functools.lru_cache
def make_sweep_step(objective: Objective, batch_size: int, num_examples: int, cached: bool) -> Callable:
    """`sweep_step` with its static settings bound, jitted (one compilation per geometry)."""
    return jax.jit(functools.partial(sweep_step, objective=objective, batch_size=batch_size,
                                     num_examples=num_examples, cached=cached))


def make_stacked_eval(model: nn.Module) -> Callable:
    """`eval_step` over stacked params `[members, ...]` and one shared batch, jitted."""
    return jax.jit(jax.vmap(functools.partial(eval_step, apply_fn=model.apply), in_axes=(0, None)))


def evaluate_members(evaluate: Callable, params: Any, split: Split, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-member (accuracy in percent, mean cross-entropy), each `[members]`, on the whole `split`."""
    loader = ResidentLoader(split, batch_size, jax.random.key(0), shuffle=False)
    totals = None
    for batch in loader.epoch(0):
        result = evaluate(params, batch)
        totals = result if totals is None else jax.tree.map(jnp.add, totals, result)
    totals = jax.device_get(totals)
    count = np.maximum(totals["count"], 1)
    return 100.0 * totals["correct"] / count, totals["loss_sum"] / count


# --- memory -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How many members one program holds on the device, from XLA's own memory analysis."""

    per_member_bytes: int
    shared_bytes: int
    capacity_bytes: int
    fits: int  # members one program can hold

    def describe(self) -> str:
        mib = 2**20
        return (f"memory: {self.per_member_bytes / mib:,.0f} MiB per member + {self.shared_bytes / mib:,.0f} MiB "
                f"shared, {self.capacity_bytes / mib:,.0f} MiB usable: up to {self.fits} members per program")


def device_capacity_bytes(device: jax.Device | None = None) -> int:
    """Memory a program may use on `device`: the accelerator's limit, or the host's available RAM on CPU."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def plan_memory(per_member_bytes: int, shared_bytes: int, capacity_bytes: int, *, headroom: float = 0.8) -> MemoryPlan:
    """Members that fit in `headroom` of `capacity_bytes`; raises SweepMemoryError if not even one does."""
    usable = int(capacity_bytes * headroom)
    fits = (usable - shared_bytes) // max(per_member_bytes, 1)
    if fits < 1:
        mib = 2**20
        raise SweepMemoryError(
            f"one sweep member needs about {(per_member_bytes + shared_bytes) / mib:,.0f} MiB "
            f"({shared_bytes / mib:,.0f} MiB of it the shared data and teacher outputs) but only "
            f"{usable / mib:,.0f} MiB are usable on {jax.devices()[0].device_kind}; use a smaller --batch-size or "
            "--train-size, or a device with more memory"
        )
    return MemoryPlan(per_member_bytes, shared_bytes, capacity_bytes, int(fits))


def _nbytes(tree: Any) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype"))


def measure_memory(
    objective: Objective, model: nn.Module, split: Split, settings: SweepSettings, teacher: Any, cached: bool
) -> tuple[int, int]:
    """(bytes per member, shared bytes) of the sweep step, from XLA's analysis of one- and two-member compiles.

    Per member: the growth from one member to two (states in and out, the step's
    temporaries). Shared: the split and the teacher's outputs or params, all resident on the
    device (XLA leaves out arguments the step does not read, so they are counted here).
    """
    n = len(split)
    images = jax.ShapeDtypeStruct(split.images.shape, split.images.dtype)
    labels = jax.ShapeDtypeStruct(split.labels.shape, split.labels.dtype)
    step = make_sweep_step(objective, settings.batch_size, n, cached)

    def compiled_bytes(members: int) -> int | None:
        seeds = list(range(members))
        states = jax.eval_shape(lambda: init_stacked_state(model, seeds, learning_rate=settings.learning_rate))
        keys = jax.eval_shape(lambda: jnp.stack([jax.random.key(seed) for seed in seeds]))
        orders = jax.ShapeDtypeStruct((members, num_batches(n, settings.batch_size) * settings.batch_size), jnp.int32)
        weights = LossWeights(*(jax.ShapeDtypeStruct((members,), jnp.float32),) * 3)
        compiled = step.lower(states, orders, np.int32(0), images, labels, teacher, keys, weights).compile()
        analysis = compiled.memory_analysis()
        if analysis is None:
            return None
        return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes

    shared_bytes = _nbytes((images, labels, teacher))
    one, two = compiled_bytes(1), compiled_bytes(2)
    if one is None or two is None or two <= one:  # no analysis: states in and out, plus a generous temp guess
        state_bytes = _nbytes(jax.eval_shape(
            lambda: init_stacked_state(model, [0], learning_rate=settings.learning_rate)))
        return 8 * state_bytes, shared_bytes
    per_member = two - one
    return per_member, max(shared_bytes, one - per_member)


# --- the loop -----------------------------------------------------------------------------------


@dataclasses.dataclass
class MemberResult:
    member: Member
    test_accuracy: float  # percent, after the last epoch
    test_loss: float  # mean cross-entropy, nats
    history: list[dict[str, float]]


@dataclasses.dataclass
class SweepRun:
    """What `train_members` returns."""

    results: list[MemberResult]
    states: TrainState = dataclasses.field(repr=False)  # stacked, `[members, ...]` per leaf
    train_seconds: float  # this invocation's training wall time, evaluation excluded


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    save_every_steps: int = 200  # checkpoint cadence inside an epoch, besides every epoch end


def train_members(
    members: Sequence[Member],
    data: Cifar10,
    model: nn.Module,
    settings: SweepSettings,
    checkpoints: RunCheckpoints,
    *,
    teacher: Any = None,
    cached: bool = False,
    log: Callable[[str], None] = print,
    desc: str = "sweep",
) -> SweepRun:
    """Train `members` (one objective) together for `settings.epochs`; resumes from `checkpoints`.

    `teacher` is the teacher-output cache when `cached`, else the teacher's params (None for
    `ce`). A NaN/Inf loss in any member stops the sweep (TrainingDivergedError, naming it).
    """
    objectives = {m.objective for m in members}
    if len(objectives) != 1:
        raise ValueError(f"train_members trains one objective at a time, got {sorted(objectives)}")
    (objective,) = objectives
    if objective != "ce" and teacher is None:
        raise ValueError(f"the {objective!r} objective needs the teacher (its output cache or params)")
    split = data.train
    n, batch_size = len(split), settings.batch_size
    if batch_size > n:
        raise ValueError(f"--batch-size {batch_size} is larger than the {n} training examples")
    keys = [init_keys(m.seed) for m in members]
    data_keys = jnp.stack([k[1] for k in keys])
    dropout_keys = jnp.stack([k[2] for k in keys])
    weights = stack_weights(members)
    states = init_stacked_state(model, [m.seed for m in members], learning_rate=settings.learning_rate)
    images, labels = jax.device_put((split.images, split.labels))
    step = make_sweep_step(objective, batch_size, n, cached)
    evaluate = make_stacked_eval(model)
    batches = num_batches(n, batch_size)
    orders_for = jax.jit(jax.vmap(lambda key, epoch: epoch_order(key, epoch, n, batch_size), in_axes=(0, None)))

    position, history = Position(0, 0), [[] for _ in members]
    running = np.zeros(len(members))
    restored = checkpoints.restore_latest(states, dropout_keys)
    if restored is not None:
        states, dropout_keys, position, meta = restored
        history = meta["history"]
        running = np.asarray(meta.get("running", running))
        log(f"{desc}: resuming at epoch {position.epoch + 1}, batch {position.batch} from {checkpoints.directory}")

    first_bad = jnp.full((len(members),), -1, jnp.int32)
    train_seconds = 0.0

    def check_finite() -> None:
        bad = np.asarray(first_bad)
        if (bad >= 0).any():
            names = "; ".join(f"{label(members[i])} at step {bad[i] + 1}" for i in np.flatnonzero(bad >= 0))
            raise TrainingDivergedError(
                f"{desc}: loss became NaN/Inf for {names}; stopped. The last good checkpoint is kept in "
                f"{checkpoints.directory}. Drop that setting from the sweep or lower --learning-rate."
            )

    def save(pos: Position, loss_sums: jax.Array) -> None:
        check_finite()
        checkpoints.save(states, dropout_keys, pos, {"history": history, "running": np.asarray(loss_sums).tolist()},
                         step=int(states.step[0]))

    for epoch in range(position.epoch, settings.epochs):
        start_batch = position.batch if epoch == position.epoch else 0
        loss_sums = jnp.asarray(running if start_batch else np.zeros(len(members)), jnp.float32)
        orders = orders_for(data_keys, epoch)
        bar = tqdm(total=batches, initial=start_batch, desc=f"{desc} {epoch + 1}/{settings.epochs}",
                   unit="batch", leave=False, dynamic_ncols=True)
        epoch_start = time.perf_counter()
        for index in range(start_batch, batches):
            states, metrics = step(states, orders, np.int32(index), images, labels, teacher, dropout_keys, weights)
            loss_sums = loss_sums + metrics["loss"]
            first_bad = first_nonfinite(first_bad, metrics["loss"], states.step - 1)
            done = index + 1
            if done % 10 == 0 or done == batches:
                check_finite()
                bar.update(done - bar.n)
            if settings.save_every_steps and done % settings.save_every_steps == 0 and done < batches:
                save(Position(epoch, done), loss_sums)
        jax.block_until_ready(states)
        elapsed = time.perf_counter() - epoch_start
        train_seconds += elapsed
        bar.close()
        accuracy, test_loss = evaluate_members(evaluate, states.params, data.test, batch_size)
        train_loss = np.asarray(loss_sums) / batches
        for i in range(len(members)):
            history[i].append({"epoch": epoch + 1, "train_loss": float(train_loss[i]),
                               "test_accuracy": float(accuracy[i]), "test_loss": float(test_loss[i])})
        save(Position(epoch + 1, 0), jnp.zeros(len(members)))
        log(f"{desc} epoch {epoch + 1}/{settings.epochs}: test accuracy {np.min(accuracy):.2f}-"
            f"{np.max(accuracy):.2f}% over {len(members)} members, {elapsed:.1f} s")

    if settings.epochs and history[0] and history[0][-1]["epoch"] == settings.epochs:
        finals = [(h[-1]["test_accuracy"], h[-1]["test_loss"]) for h in history]
    else:
        accuracy, test_loss = evaluate_members(evaluate, states.params, data.test, batch_size)
        finals = list(zip(accuracy.tolist(), test_loss.tolist()))
    results = [MemberResult(m, float(a), float(loss), h) for m, (a, loss), h in zip(members, finals, history)]
    return SweepRun(results, states, train_seconds)


def label(member: Member) -> str:
    setting = ", ".join(f"{name}={value:g}" for name, value in member.setting.items())
    return f"{member.objective}[{setting + ', ' if setting else ''}seed={member.seed}]"


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """`items` in consecutive pieces of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
