"""Data parallelism on a device mesh: the same jitted steps on one device or many.

The mesh has one axis, `"batch"`, over the devices. Batches are split along their leading
axis (`NamedSharding(mesh, P("batch"))`); the train state, the teacher's params and the
teacher-output cache are replicated (`P()`). Given inputs placed that way, `jax.jit`
partitions a step by itself: each device runs its rows of the global batch and XLA adds the
all-reduce that the batch mean implies, so the maths is that of one device holding the
whole batch and results agree up to float summation order.

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
