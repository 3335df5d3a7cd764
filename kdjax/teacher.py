"""A teacher is a value that answers one question: its outputs for a batch, for the roles a method reads.

`Teacher(network, params, state)` runs the network in inference mode inside the student's
step (on its running averages, never updating them, as a PyTorch teacher kept in `eval()`).
`CachedTeacher(outputs)` holds those outputs for a whole split, computed once, and gathers a
batch's rows by the batch's `index`: valid only while the teacher would see the same input
for an example every epoch. `choose_teacher` decides which one a run uses and says why.
Both are pytrees (`flax.struct`): a jitted step takes either as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from kdjax.data import TUTORIAL_NORMALIZATION, Normalization, ResidentLoader, Split
from kdjax.network import HEAD_READ, HIDDEN_ROLE, Network
from kdjax.parallel import parameter_shardings, place, replicate
from kdjax.tasks import NEXT_TOKEN

Batch = Mapping[str, jax.Array]
CACHE_MEMORY_FRACTION = 0.25  # of the device's memory, at most, for a cache: the students' programs need the rest


@struct.dataclass
class Teacher:
    """A network with its trained weights: `params` and `state` (BatchNorm's statistics; `{}` without any)."""

    network: Network = struct.field(pytree_node=False)
    params: Any
    state: Any

    def outputs(self, batch: Batch, reads: Iterable[str]) -> dict[str, Any]:
        """`{"logits": [batch, classes], role: ...}` for `batch["inputs"]`, whichever of them `reads` names;
        `"head"` (`kdjax.network.HEAD_READ`) gives the network's `LinearHead` (hidden states and head weights)."""
        reads = tuple(reads)
        roles = tuple(role for role in reads if role not in ("logits", HEAD_READ))
        if HEAD_READ in reads:
            roles += (HIDDEN_ROLE,)
        # Logits nothing reads (only the head was asked for) are left out of a jitted program.
        logits, found, _ = self.network.forward(self.params, self.state, batch["inputs"], train=False, roles=roles)
        if HEAD_READ in reads:
            found[HEAD_READ] = self.network.linear_head(self.params, found.pop(HIDDEN_ROLE))
        return {role: logits if role == "logits" else found[role] for role in reads}

    @property
    def variables(self) -> tuple[Any, Any]:
        return self.params, self.state

    def parameter_shardings(self, mesh: Mesh, parameter_sharding: str = "replicated") -> Any:
        """Where each of the parameters lives on `mesh`: replicated or fully sharded (`kdjax.parallel`)."""
        annotations = self.network.partition_dimensions() if parameter_sharding == "fsdp" else None
        return parameter_shardings(self.params, mesh, parameter_sharding, annotations=annotations)

    def on(self, mesh: Mesh, parameter_sharding: str = "replicated") -> Teacher:
        """This teacher on `mesh`: its parameters as `parameter_shardings` says, its state replicated."""
        params = place(self.params, self.parameter_shardings(mesh, parameter_sharding))
        return self.replace(params=params, state=replicate(self.state, mesh))


@struct.dataclass
class CachedTeacher:
    """A teacher's outputs for every example of one split, `{role: [examples, ...]}` (or a pytree of such arrays,
    as an offline teacher's `TopKLogits`), in split order."""

    table: dict[str, jax.Array]

    def outputs(self, batch: Batch, reads: Iterable[str]) -> dict[str, jax.Array]:
        """The rows of `batch["index"]` (each example's position in the split)."""
        missing = [role for role in reads if role not in self.table]
        if missing:
            raise ValueError(f"the teacher cache holds {sorted(self.table)}, not {missing}: cache what the method reads")
        return {role: jax.tree.map(lambda table: table[batch["index"]], self.table[role]) for role in reads}

    def on(self, mesh: Mesh, parameter_sharding: str = "replicated") -> CachedTeacher:
        """This cache replicated on `mesh` (every device gathers its rows)."""
        return replicate(self, mesh)


def cache_outputs(teacher: Teacher, split: Split, reads: Iterable[str], *, batch_size: int = 500,
                  normalization: Normalization = TUTORIAL_NORMALIZATION) -> CachedTeacher:
    """`teacher`'s outputs for every example of `split` (what `reads` names), computed once, in split order."""
    reads = tuple(sorted(set(reads)))
    forward = jax.jit(lambda teacher, batch: teacher.outputs(batch, reads))
    loader = ResidentLoader(split, min(batch_size, len(split)), jax.random.key(0), shuffle=False,
                            normalization=normalization)
    chunks = [forward(teacher, batch) for batch in loader.epoch(0)]
    return CachedTeacher({role: jnp.concatenate([chunk[role] for chunk in chunks])[:len(split)] for role in reads})


def cache_bytes(teacher: Teacher, split: Split, reads: Iterable[str]) -> int:
    """Bytes a cache of `reads` over `split` would take, from the outputs' shapes (nothing is computed)."""
    example = {"inputs": jax.ShapeDtypeStruct((1, *split.inputs.shape[1:]), _input_dtype(split, teacher))}
    shapes = jax.eval_shape(lambda batch: teacher.outputs(batch, tuple(reads)), example)
    return sum(len(split) * int(np.prod(s.shape[1:])) * s.dtype.itemsize for s in jax.tree.leaves(shapes))


def _input_dtype(split: Split, teacher: Teacher):
    return teacher.network.input_dtype if split.task is NEXT_TOKEN else jnp.float32


def cache_off_reason(teacher: Teacher, split: Split, reads: Sequence[str], *, augment: str, wanted: bool = True,
                     capacity_bytes: int | None = None, streamed: bool = False) -> str | None:
    """Why a cache of `teacher`'s outputs over `split` cannot serve the students, or None if it can.

    A cache must never change results: it is refused where the teacher would see another input
    for an example each epoch (augmentation), where it would hold `[examples, time, vocab]` logits
    (next-token data: a top-k cache would change the loss), and where it would not fit.
    """
    if not wanted:
        return "not wanted (cache=False)"
    if streamed:
        return "the data are streamed: the teacher sees each batch as it is read"
    if split.task is NEXT_TOKEN:
        return ("next-token data: a cache would hold [examples, time, vocab] logits, and a top-k one would change the "
                "loss")
    if augment != "none":
        return f"augmentation ({augment}) shows the teacher another image of each example every epoch"
    if HEAD_READ in reads:
        return "the step reads the teacher's hidden states and output head (the fused losses), not outputs to keep"
    if capacity_bytes is not None:
        needed = cache_bytes(teacher, split, reads)
        if needed > CACHE_MEMORY_FRACTION * capacity_bytes:
            return (f"it would take {needed / 2**30:.1f} GiB, over {CACHE_MEMORY_FRACTION:.0%} of the device's "
                    f"{capacity_bytes / 2**30:.1f} GiB")
    return None


TeacherLike = Teacher | CachedTeacher
