"""How many members fit in one program: XLA's memory analysis of the program step against the device's capacity."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kdjax.data import Split
from kdjax.data.pipeline import num_batches
from kdjax.engine.members import Member
from kdjax.data.stream import choose_loader
from kdjax.engine.step import ProgramSpec, init_states, program_step, state_shardings, step_data, unrolls
from kdjax.methods import Method
from kdjax.optimizers import make_optimizer
from kdjax.parallel import batch_mesh
from kdjax.teacher import Teacher, TeacherLike
from kdjax.train import Objective, Settings, TrainState


class ProgramMemoryError(MemoryError):
    """Not even one member fits in the device's memory."""


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


def mesh_capacity_bytes(mesh: Mesh) -> int:
    """`device_capacity_bytes` of this process's first device on `mesh`, the least over all processes: every
    process must take the same decisions from it (program sizes, the data loader, the teacher cache)."""
    local = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    capacity = device_capacity_bytes(local)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mib = multihost_utils.process_allgather(np.int32(capacity // 2**20))  # int32: JAX's default width
        capacity = int(np.min(mib)) * 2**20
    return capacity


def loader_choice(split: Split, settings: Settings, mesh: Mesh) -> tuple[str, str]:
    """`("resident" | "streaming", why)`: how `settings.data_loader` serves `split` on `mesh`'s devices."""
    if settings.data_loader != "auto":  # no measurement (and, across processes, no collective) needed
        return choose_loader(split, settings.data_loader, 0)
    return choose_loader(split, settings.data_loader, mesh_capacity_bytes(mesh))


def plan_memory(per_member_bytes: int, shared_bytes: int, capacity_bytes: int, *, headroom: float = 0.8) -> MemoryPlan:
    """Members that fit in `headroom` of `capacity_bytes`; raises ProgramMemoryError if not even one does."""
    usable = int(capacity_bytes * headroom)
    fits = (usable - shared_bytes) // max(per_member_bytes, 1)
    if fits < 1:
        mib = 2**20
        raise ProgramMemoryError(
            f"one member needs about {(per_member_bytes + shared_bytes) / mib:,.0f} MiB "
            f"({shared_bytes / mib:,.0f} MiB of it the shared data and teacher outputs) but only "
            f"{usable / mib:,.0f} MiB are usable on {jax.devices()[0].device_kind}; use a smaller --batch-size or "
            "--train-size, or a device with more memory"
        )
    return MemoryPlan(per_member_bytes, shared_bytes, capacity_bytes, int(fits))


def nbytes(tree: Any) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype"))


def measure(compiled_bytes: Callable[[int], int | None], shared: Any, state_bytes: int) -> tuple[int, int]:
    """(bytes per member, shared bytes) from `compiled_bytes(members)` of one- and two-member programs.

    Per member: the growth from one member to two (states in and out, the step's
    temporaries). Shared: `shared` (the split and the teacher's outputs or params, resident
    on the device; XLA leaves out arguments a step does not read, so they are counted
    here). Without an analysis: 8x the member's state.
    """
    shared_bytes = nbytes(shared)
    one, two = compiled_bytes(1), compiled_bytes(2)
    if one is None or two is None or two <= one:
        return 8 * state_bytes, shared_bytes
    per_member = two - one
    return per_member, max(shared_bytes, one - per_member)


def program_analysis(objective: Objective, train_split: Split, settings: Settings, teacher_arg: TeacherLike | None,
                     mesh: Mesh, members: int = 1) -> Any:
    """XLA's memory analysis (`temp_size_in_bytes`, ...) of `objective`'s program step for `members` members,
    compiled from shapes alone (nothing is allocated); None where the backend gives none."""
    spec = ProgramSpec(objective, settings.batch_size, len(train_split), settings.augment,
                       unrolls(settings, mesh), mesh, settings.labelled, settings.normalization,
                       parameter_sharding=settings.parameter_sharding,
                       streamed=loader_choice(train_split, settings, mesh)[0] == "streaming")
    step = jax.jit(functools.partial(program_step, spec=spec))
    # Shapes only: a restored teacher's arrays live on one device, which a program over a wider mesh cannot take
    # as they are (the step itself gets them replicated onto its mesh, or split with fsdp).
    states = state_shapes(objective, train_split, settings, members)
    shapes = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), teacher_arg)
    if settings.parameter_sharding == "fsdp":
        states = _with_shardings(states, state_shardings(states, spec))
        if isinstance(teacher_arg, Teacher):
            shapes = shapes.replace(params=_with_shardings(shapes.params, teacher_arg.parameter_shardings(
                mesh, "fsdp")))
    teacher_arg = shapes
    orders, data = step_data(train_split, spec, members, members)
    keys = jax.eval_shape(lambda: jnp.stack([jax.random.key(i) for i in range(members)]))
    hp = {name: jax.ShapeDtypeStruct((members,), jnp.float32) for name in objective.method.hyperparameters}
    lowered = step.lower(states, orders, np.int32(0), np.int32(0), data, teacher_arg, keys, keys, hp)
    return lowered.compile().memory_analysis()


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        tree, shardings)


def state_shapes(objective: Objective, train_split: Split, settings: Settings, members: int) -> TrainState:
    tx = make_optimizer(settings, num_batches(len(train_split), settings.batch_size))
    return jax.eval_shape(lambda: init_states(objective, list(range(members)), tx))


def member_bytes(objective: Objective, train_split: Split, settings: Settings, teacher_arg: TeacherLike | None,
                 mesh: Mesh) -> tuple[int, int]:
    """(bytes per member, shared bytes) of `objective`'s program step, from XLA's analysis of one- and two-member
    compiles (`memory.measure`)."""
    def compiled_bytes(count: int) -> int | None:
        analysis = program_analysis(objective, train_split, settings, teacher_arg, mesh, count)
        if analysis is None:
            return None
        return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes

    resident = loader_choice(train_split, settings, mesh)[0] == "resident"
    return measure(compiled_bytes, (train_split.arrays() if resident else None, teacher_arg),
                   nbytes(state_shapes(objective, train_split, settings, 1)))


def plan_program_size(objectives: Mapping[Method, Objective], members: Sequence[Member], train_split: Split,
                      settings: Settings, teacher_arg: TeacherLike | None) -> MemoryPlan:
    """How many of `members` one program holds on this device.

    A program that mixes methods is planned by the most demanding of them (the largest
    per-member and shared bytes), each measured with its own teacher forward per member, so
    the plan errs on the side of smaller programs.
    """
    mesh = batch_mesh(settings.devices or None)
    measured = [member_bytes(objectives[method], train_split, settings, teacher_arg, mesh)
                for method in dict.fromkeys(member.method for member in members)]
    return plan_memory(max(p for p, _ in measured), max(s for _, s in measured), mesh_capacity_bytes(mesh))


