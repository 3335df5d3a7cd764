"""Members and their programs: who trains, with which settings, and how they are grouped.

A member is one run: a method, a seed and the method's hyperparameters (`Member`). Members
of one method train together in one compiled program; members with one seed see the same
batches (`data_groups`), so that comparisons between methods are paired.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import methods
from kdjax.methods import Method
from kdjax.train import TrainState


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


