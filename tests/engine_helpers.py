"""Tiny synthetic data and one-call training runs for the engine tests."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import numpy as np

from kdjax import methods
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import Cifar10, Split
from kdjax.loop import Member, MemberResult, Settings, train_members
from kdjax.network import tutorial_student, tutorial_teacher
from kdjax.train import build_objective, create_train_state
from kdjax.teacher_cache import compute_teacher_cache


def tiny_data(n_train: int = 160, n_test: int = 64) -> Cifar10:
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))

    return Cifar10(split(n_train), split(n_test), "synthetic", 0.0)


def teacher_params(seed: int = 5):
    """Randomly initialised DeepNN `(params, state)`: any teacher serves these tests."""
    state = create_train_state(build_objective(methods.get("ce"), tutorial_teacher()), jax.random.key(seed))
    return state.params["model"], state.model_state["model"]


def _folder(chunk: Sequence[Member], members: Sequence[Member]) -> str:
    """The method's name, plus the first seed when the method's members are split over several programs."""
    whole = sum(m.method == chunk[0].method for m in members) == len(chunk)
    return chunk[0].method if whole else f"{chunk[0].method}-{chunk[0].seed}"


def run_members(tmp: pathlib.Path, members: Sequence[Member], *, epochs: int = 1, cached: bool = True,
                data: Cifar10 | None = None, name: str = "run", programs_out: list | None = None,
                teacher_in_step: bool = False, **settings) -> list[MemberResult]:
    """Train `members` of the tutorial student on tiny data (batch 32) with a fixed random teacher."""
    data = data or tiny_data()
    params = teacher_params()
    reads = {role for m in members for role in methods.get(m.method).reads}

    def source():
        if cached:
            return compute_teacher_cache(tutorial_teacher(), params, data.train, reads), True
        return params, False

    config = Settings(epochs=epochs, batch_size=32, save_every_steps=settings.pop("save_every_steps", 0), **settings)
    programs = train_members(members, tutorial_student(), data.train, data.test, config,
                             lambda chunk: RunCheckpoints(tmp / name / _folder(chunk, members), {"test": name}),
                             teacher=tutorial_teacher(), teacher_source=source, log=lambda _: None,
                             teacher_in_step=teacher_in_step)
    if programs_out is not None:
        programs_out.extend(programs)
    return [result for program in programs for result in program.results]
