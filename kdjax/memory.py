"""How many members fit in one program: XLA's memory analysis against the device's capacity."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax


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
