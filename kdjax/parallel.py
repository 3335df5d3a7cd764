"""Data parallelism on a device mesh, with parameters replicated or fully sharded: the same jitted steps on one device
or many.

The mesh has one axis, `"batch"`, over the devices. Batches are split along their leading
axis (`NamedSharding(mesh, P("batch"))`). Parameters, optimiser state and the teacher's
parameters are either replicated (`P()`) or, with `fsdp`, fully sharded over that same axis
(ZeRO-3 / PyTorch FSDP): each array is split along one dimension that divides evenly over the
devices, the one its Flax partitioning annotation names (linen's `nn.with_partitioning`: the
first annotated dimension that divides) or else its largest, so
each device holds about 1/n of the model. The teacher-output cache is replicated. Given inputs
placed that way, `jax.jit` partitions a step by itself: each device runs its rows of the
global batch, XLA gathers sharded weights where a layer needs them and adds the reductions
that the batch mean implies, so the maths is that of one device holding everything and
results agree up to float summation order.

Layouts: members are never split over devices (each device holds its share of every member);
the data is split over all the mesh's devices; parameters are replicated or sharded over
those same devices. `fsdp` on one device is refused, as is a mesh axis the engine does not
know.

On several hosts, call `jax.distributed.initialize()` before anything else touches JAX
(`--distributed` in the experiments does); `jax.devices()` then spans every host, each
host computes the same global batch order from the shared key and feeds the rows that live
on its own devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
PARAMETER_SHARDING = ("replicated", "fsdp")


def batch_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh named `"batch"`: over `devices`, the first `devices` of `jax.devices()`, or all of them."""
    available = jax.devices()
    if devices is None:
        devices = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(f"asked for {devices} devices but {len(available)} are available "
                             f"({available[0].platform}); pass --devices between 1 and {len(available)}")
        devices = available[:devices]
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise if the global batch does not split evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        raise ValueError(f"batch size {batch_size} does not split evenly over {n} devices: use a multiple of {n} "
                         f"(e.g. --batch-size {lower or upper} or {upper}) or --devices that divides {batch_size}")


def check_layout(parameter_sharding: str, mesh: Mesh) -> None:
    """Raise ValueError, in one line, for a parameter layout the engine does not run on `mesh`."""
    if parameter_sharding not in PARAMETER_SHARDING:
        raise ValueError(f"parameter sharding must be one of {', '.join(PARAMETER_SHARDING)}, got "
                         f"{parameter_sharding!r}")
    if tuple(mesh.axis_names) != (BATCH_AXIS,):
        raise ValueError(f"the engine trains on a mesh with the one axis {BATCH_AXIS!r} (data, and fsdp's parameters "
                         f"over the same devices), got axes {tuple(mesh.axis_names)}")
    if parameter_sharding == "fsdp" and mesh.devices.size == 1:
        raise ValueError("parameter sharding fsdp splits the parameters over the devices, but the mesh has one: "
                         "train on more (--devices N, N > 1) or keep them replicated")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh: each device holds `batch / n_devices` rows."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` copied whole onto every device of `mesh`."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: _place(leaf, sharding) if _is_array(leaf) else leaf, tree)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def _place(value: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(value, jax.Array) and sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_place(jax.random.key_data(value), sharding),
                                        impl=jax.random.key_impl(value))
    host = np.asarray(value)  # across hosts: every host holds the same value and supplies its devices' part
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def fsdp_spec(shape: Sequence[int], devices: int, *, leading: int = 0, preferred: Sequence[int] = ()
              ) -> PartitionSpec:
    """The FSDP split of one array: the first of `preferred` dimensions (an annotation's) that divides evenly over
    `devices`, else the largest that does (the earliest on a tie); `P()` (replicated) if none does.

    `leading` dimensions (a stacked members axis) are never split. Dimensions are counted from 0 after them.
    """
    dims = [d for d in range(len(shape) - leading) if shape[leading + d] % devices == 0
            and shape[leading + d] >= devices]
    if devices == 1 or not dims:
        return PartitionSpec()
    chosen = next((d for d in preferred if d in dims), None)
    if chosen is None:
        chosen = max(dims, key=lambda d: (shape[leading + d], -d))
    return PartitionSpec(*([None] * (leading + chosen)), BATCH_AXIS)


def parameter_shardings(tree: Any, mesh: Mesh, sharding: str, *, leading: int = 0,
                        annotations: Any = None) -> Any:
    """A `NamedSharding` per array leaf of `tree` (arrays or shapes): all replicated, or `fsdp_spec`'s split.

    `annotations`: a tree like `tree` of the dimensions Flax partitioning names
    (`kdjax.network.Network.partition_dimensions`), or None.
    """
    if sharding not in PARAMETER_SHARDING:
        raise ValueError(f"parameter sharding must be one of {', '.join(PARAMETER_SHARDING)}, got {sharding!r}")
    devices = mesh.size
    leaves, treedef = jax.tree.flatten(tree)
    preferred = [()] * len(leaves) if annotations is None else treedef.flatten_up_to(annotations)
    specs = [fsdp_spec(leaf.shape, devices, leading=leading, preferred=dims)
             if sharding == "fsdp" and hasattr(leaf, "shape") else PartitionSpec()
             for leaf, dims in zip(leaves, preferred)]
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, spec) for spec in specs])


def place(tree: Any, shardings: Any) -> Any:
    """Every array leaf of `tree` put on the devices as its `NamedSharding` in `shardings` (a matching tree) says."""
    return jax.tree.map(lambda leaf, sharding: _place(leaf, sharding) if _is_array(leaf) else leaf, tree, shardings)


def per_device_bytes(tree: Any) -> int:
    """Bytes the first device holds of `tree`'s placed arrays."""
    device = None
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            shard = leaf.addressable_shards[0] if device is None else next(
                s for s in leaf.addressable_shards if s.device == device)
            device = shard.device
            total += shard.data.size * shard.data.dtype.itemsize
    return total
