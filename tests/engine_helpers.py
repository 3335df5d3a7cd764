"""Tiny synthetic data and one-call training runs for the engine tests."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn

from kdjax import methods
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import Dataset, Split
from kdjax.engine import Member, MemberResult, Settings, train_members
from kdjax.network import Network, linen_network
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.train import build_objective, create_train_state
from kdjax.teacher import Teacher


def tiny_data(n_train: int = 160, n_test: int = 64) -> Dataset:
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))

    return Dataset(split(n_train), split(n_test), "synthetic", 0.0)


def teacher_params(seed: int = 5):
    """Randomly initialised DeepNN `(params, state)`: any teacher serves these tests."""
    state = create_train_state(build_objective(methods.get("ce"), tutorial_teacher()), jax.random.key(seed))
    return state.params["model"], state.model_state["model"]


def _folder(chunk: Sequence[Member], members: Sequence[Member]) -> str:
    """The method's name, plus the first seed when the method's members are split over several programs."""
    whole = sum(m.name == chunk[0].name for m in members) == len(chunk)
    return chunk[0].name if whole else f"{chunk[0].name}-{chunk[0].seed}"


def run_members(tmp: pathlib.Path, members: Sequence[Member], *, epochs: int = 1, cached: bool = True,
                data: Dataset | None = None, name: str = "run", programs_out: list | None = None,
                **settings) -> list[MemberResult]:
    """Train `members` of the tutorial student on tiny data (batch 32) with a fixed random teacher (its outputs
    cached where that is valid, unless `cached` is False)."""
    data = data or tiny_data()
    config = Settings(epochs=epochs, batch_size=32, save_every_steps=settings.pop("save_every_steps", 0), **settings)
    programs = train_members(members, tutorial_student(), data.train, data.test, config,
                             lambda chunk: RunCheckpoints(tmp / name / _folder(chunk, members), {"test": name}),
                             teacher=Teacher(tutorial_teacher(), *teacher_params()), cache=cached,
                             log=lambda _: None)
    if programs_out is not None:
        programs_out.extend(programs)
    return [result for program in programs for result in program.results]


class BatchNormCNN(nn.Module):
    """A small CNN with BatchNorm (running statistics in `batch_stats`) and dropout; `block` is `[n, 8, 8, 16]`."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="block")(x))
        x = nn.Dropout(0.1, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(10)(x)


def batchnorm_network() -> Network:
    return linen_network(BatchNormCNN(), input_shape=(32, 32, 3), roles={"feature_map": "block"})


def train_batchnorm(tmp: pathlib.Path, members: Sequence[Member], *, name: str, teacher=None, cached: bool = True,
                    data: Dataset | None = None, **settings) -> list:
    """Train BatchNorm students of `members` (batch 32 unless set, tiny data); `teacher`: `(network, (params,
    state))`."""
    data = data or tiny_data()
    settings = {"epochs": 1, "batch_size": 32, **settings}
    config = Settings(save_every_steps=0, **settings)
    return train_members(members, batchnorm_network(), data.train, data.test, config,
                         lambda chunk: RunCheckpoints(tmp / name / chunk[0].name, {"test": name}),
                         teacher=Teacher(teacher[0], *teacher[1]) if teacher else None, cache=cached,
                         log=lambda _: None)
