"""The program step: every member of a program advanced by one batch in one jitted call.

On CPU the members are laid out one after another in the program (`member_batching="unroll"`),
which makes a member's arithmetic the same whatever else shares its program; on accelerators
they are batched with `jax.vmap` (`"vmap"`). Each member's batch is split over the mesh's
`"batch"` axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from kdjax.data.formats import Split
from kdjax.data.normalization import TUTORIAL_NORMALIZATION, Normalization
from kdjax.data.pipeline import Batch, augment_batch, finish_batch, gather_batch, num_batches
from kdjax.on_policy import on_policy_batch, sampling_key
from kdjax.parallel import batch_sharding, parameter_shardings
from kdjax.teacher import TeacherLike
from kdjax.train import Objective, Settings, TrainState, create_train_state, init_keys, train_step

CROP_PADDING = 4  # pixels, as the CIFAR recipes' RandomCrop(32, padding=4)


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
    parameter_sharding: str = "replicated"  # or "fsdp": states split over the mesh (`kdjax.parallel`)
    streamed: bool = False  # batches arrive read (`kdjax.data.stream`), not gathered from a resident split


def program_step(states: TrainState, orders: jax.Array, epoch: jax.Array, index: jax.Array,
                 data: dict[str, jax.Array], teacher: TeacherLike | None, data_keys: jax.Array, dropout_keys: jax.Array,
                 hyperparameters: Mapping[str, jax.Array], *, spec: ProgramSpec) -> tuple[TrainState, dict]:
    """Advance every member by batch `index` of its own epoch order.

    Unrolled members of one data group (`spec.data_groups`: the same seed) gather, augment
    and run the teacher on their batch once between them; members may then differ in method
    (`spec.objectives`).

    Args:
      states: stacked train states, `[members, ...]` per leaf.
      orders: `[members, num_batches * batch_size]` int32, each member's epoch order; streamed
        (`spec.streamed`), `[members]` int32, each member's stream in `data`.
      epoch, index: int32 scalars, the epoch and the batch within it.
      data: the whole split's `Split.arrays()` (inputs, labels[, mask]), `[n, ...]`, shared; streamed, batch
        `index`'s rows `[streams, batch, ...]` (`kdjax.data.stream`).
      teacher: the `Teacher` or its `CachedTeacher` (`kdjax.teacher`), or None when no member reads one.
      data_keys, dropout_keys: `[members]` keys; hyperparameters: name -> `[members]` float32.

    Returns:
      New states and per-member metrics `[members]` (`loss`, `ce_loss`, `aux_loss`, `correct`, `finite`).
    """
    sharded = spec.mesh.devices.size > 1

    def select(order):
        if spec.streamed:
            return finish_batch(jax.tree.map(lambda rows: rows[order], data), spec.normalization)
        return gather_batch(data, order, index, batch_size=spec.batch_size, num_examples=spec.num_examples,
                            normalization=spec.normalization)

    def prepare(order, data_key, reads):
        """The batch of `order` and, if `reads` names roles, the teacher's outputs for it."""
        batch = augment_views(select(order), spec.augment, data_key, epoch, index, spec.normalization)
        if spec.labelled is not None:
            batch = batch | {"labelled": batch["index"] < spec.labelled}
        if sharded:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding(spec.mesh))
        return batch, None if reads is None else teacher.outputs(batch, reads)

    def on_policy(objective, state, batch, outputs, data_key, hp):
        """An on-policy member's own batch (its continuations, maybe) and the teacher's outputs for it."""
        method = objective.method
        if method.sampling is None:
            return batch, outputs
        batch = on_policy_batch(objective.student, method.sampling, state.params["model"], state.model_state["model"],
                                batch, sampling_key(data_key, epoch, index), hp)
        return batch, teacher.outputs(batch, objective.teacher_reads)

    if not spec.unroll:
        objective = spec.objective
        shared_reads = None if objective.method.sampling else objective.teacher_reads or None

        def one_member(state, order, data_key, dropout_key, hp):
            batch, outputs = on_policy(objective, state, *prepare(order, data_key, shared_reads), data_key, hp)
            return train_step(state, batch, dropout_key, outputs, hp, objective=spec.objective)

        new_states, metrics = jax.vmap(one_member)(states, orders, data_keys, dropout_keys, hyperparameters)
        return keep_layout(new_states, spec), metrics

    count = orders.shape[0]
    objectives = spec.objectives or (spec.objective,) * count
    groups = spec.data_groups or tuple(range(count))
    prepared = {}  # data group -> (batch, teacher outputs), made by the group's first member

    def member_step(i, state, order, data_key, dropout_key, hp):
        method = objectives[i].method
        if groups[i] not in prepared:  # on-policy members read the teacher on their own batches
            sharing = [objectives[j] for j in range(count) if groups[j] == groups[i] and not objectives[j].method.sampling]
            reads = tuple(dict.fromkeys(r for o in sharing for r in o.teacher_reads))
            prepared[groups[i]] = prepare(order, data_key, reads or None)
        own = {name: hp[name] for name in method.hyperparameters}  # others' names hold NaN for this member
        batch, outputs = on_policy(objectives[i], state, *prepared[groups[i]], data_key, own)
        return train_step(state, batch, dropout_key, outputs, own, objective=objectives[i])

    new_states, metrics = map_members(member_step, True, indexed=True)(states, orders, data_keys, dropout_keys,
                                                                        hyperparameters)
    return keep_layout(new_states, spec), metrics


def state_shardings(states: TrainState, spec: ProgramSpec) -> TrainState:
    """Where each leaf of stacked `states` (arrays or shapes) lives on `spec.mesh`: replicated, or split as
    `kdjax.parallel.fsdp_spec` says, a parameter's optimiser slots as the parameter itself."""
    annotations = {}
    dimensions = spec.objective.student.partition_dimensions() if spec.parameter_sharding == "fsdp" else None
    if dimensions is not None:
        found = jax.tree_util.tree_flatten_with_path({"model": dimensions},
                                                     is_leaf=lambda leaf: isinstance(leaf, tuple))[0]
        annotations = {jax.tree_util.keystr(path): dims for path, dims in found if dims}
    paths, treedef = jax.tree_util.tree_flatten_with_path(states)
    preferred = [next((dims for suffix, dims in annotations.items() if jax.tree_util.keystr(path).endswith(suffix)),
                      ()) for path, _ in paths]
    return parameter_shardings(jax.tree.unflatten(treedef, [leaf for _, leaf in paths]), spec.mesh,
                               spec.parameter_sharding, leading=1, annotations=jax.tree.unflatten(treedef, preferred))


def keep_layout(states: TrainState, spec: ProgramSpec) -> TrainState:
    """`states` constrained to `state_shardings`: a step hands back its states laid out as it took them."""
    if spec.parameter_sharding == "replicated":
        return states
    return jax.lax.with_sharding_constraint(states, state_shardings(states, spec))


def step_data(split: Split, spec: ProgramSpec, members: int, streams: int = 1) -> tuple[jax.ShapeDtypeStruct, dict]:
    """The shapes of a step's `orders` and `data` for `members` members reading `split` (`streams` seeds)."""
    arrays = {"inputs": split.inputs, "labels": split.labels, **({} if split.mask is None else {"mask": split.mask})}
    if not spec.streamed:
        order_length = num_batches(spec.num_examples, spec.batch_size) * spec.batch_size
        return (jax.ShapeDtypeStruct((members, order_length), jnp.int32),
                {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in arrays.items()})
    rows = (streams, spec.batch_size)
    data = {name: jax.ShapeDtypeStruct(rows + tuple(a.shape[1:]), a.dtype) for name, a in arrays.items()}
    data |= {"index": jax.ShapeDtypeStruct(rows, jnp.int32), "present": jax.ShapeDtypeStruct(rows, jnp.bool_)}
    return jax.ShapeDtypeStruct((members,), jnp.int32), data


@functools.lru_cache(maxsize=32)
def jitted_step(spec: ProgramSpec) -> Callable:
    return jax.jit(functools.partial(program_step, spec=spec), donate_argnums=(0,))


def augment_views(batch: Batch, augment: str, key: jax.Array, epoch: jax.Array | int, index: jax.Array | int,
                  normalization: Normalization = TUTORIAL_NORMALIZATION) -> Batch:
    """`batch` as `augment` (one of `AUGMENTATIONS`) shows it at (epoch, batch index) under data key `key`."""
    if augment == "none":
        return batch
    return augment_batch(batch, key, epoch, index, crop=CROP_PADDING * (augment == "crop-flip"),
                         normalization=normalization)


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
    return _stack(*states)


@jax.jit
def _stack(*states: TrainState) -> TrainState:
    """`[members, ...]` leaves, in one compiled program rather than one per leaf shape."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


