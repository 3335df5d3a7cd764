"""Evaluation of stacked members: accuracy and mean cross-entropy on a whole split, in inference mode."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kdjax.data import ResidentLoader, Split
from kdjax.data.normalization import TUTORIAL_NORMALIZATION, Normalization
from kdjax.data.pipeline import finish_batch
from kdjax.data.stream import StreamingLoader, host_decoded
from kdjax.engine.step import augment_views, map_members
from kdjax.network import Network
from kdjax.train import AUGMENTATIONS, Objective, TrainState, eval_step


@functools.lru_cache(maxsize=32)
def _jitted_eval(network: Network, unroll: bool, augment: str, normalization: Normalization) -> Callable:
    def evaluate(params, model_state, batch, key, index):
        batch = augment_views(batch, augment, key, 0, index, normalization)
        return map_members(lambda p, s: eval_step(p, s, batch, network=network), unroll)(params, model_state)

    return jax.jit(evaluate)


@functools.lru_cache(maxsize=8)
def _stream_finisher(normalization: Normalization) -> Callable:
    """The engine's batch from a one-stream streamed batch."""
    return jax.jit(lambda rows: finish_batch(jax.tree.map(lambda leaf: leaf[0], rows), normalization))


def evaluate_members(objective: Objective, states: TrainState, split: Split, batch_size: int, unroll: bool,
                     mesh: Mesh | None = None, *, augment: str = "none", key: jax.Array | None = None,
                     normalization: Normalization = TUTORIAL_NORMALIZATION, streamed: bool = False,
                     workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-member (accuracy in percent, mean cross-entropy), each `[members]`, on all of `split`.

    `states` are stacked; the model runs in inference mode on its running averages.

    With `augment`, on one augmented view of each image, drawn from `key` (default `key(0)`)
    as a training epoch 0 would draw it. `streamed`: read the split batch by batch on the host
    (`kdjax.data.stream`, with `workers` decoding image files) rather than putting it on the device;
    a split of image files is always streamed.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    normalization = tuple(map(tuple, normalization))
    evaluate = _jitted_eval(objective.student, unroll, augment, normalization)
    key = jax.random.key(0) if key is None else key
    if streamed or host_decoded(split):
        loader = StreamingLoader(split, batch_size, jax.random.key(0)[None], shuffle=False, mesh=mesh, workers=workers)
        finish = _stream_finisher(normalization)
        batches = (finish(rows) for rows in loader.epoch(0))
    else:
        batches = ResidentLoader(split, batch_size, jax.random.key(0), shuffle=False, mesh=mesh,
                                 normalization=normalization).epoch(0)
    totals = None
    for index, batch in enumerate(batches):
        result = evaluate(states.params["model"], states.model_state["model"], batch, key, jnp.int32(index))
        totals = result if totals is None else jax.tree.map(jnp.add, totals, result)
    totals = jax.device_get(totals)
    count = np.maximum(totals["count"], 1)
    return 100.0 * totals["correct"] / count, totals["loss_sum"] / count


def model_variables(states: TrainState, member: int = 0) -> tuple[Any, Any]:
    """Member `member`'s model `(params, state)` out of stacked train states: what a teacher runs on."""
    return jax.tree.map(lambda leaf: leaf[member], (states.params["model"], states.model_state["model"]))


