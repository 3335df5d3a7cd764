"""Train state and pure, jittable train/eval steps for the teacher and the four students.

A batch is a dict: `image` `[batch, 32, 32, 3]` float32 (normalised NHWC), `label`
`[batch]` int32, and optionally `mask` `[batch]` bool marking real (non-padding)
examples. Steps are pure: `(state, batch, key, teacher_params) -> (state, metrics)`;
nothing here reads files or prints.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training.train_state import TrainState

from kdjax import losses
from kdjax.models import IMAGE_SHAPE, DeepNN, ModelOutput

Objective = Literal["ce", "kd", "cosine", "hint"]
OBJECTIVES: tuple[Objective, ...] = ("ce", "kd", "cosine", "hint")
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch, jax.Array, Any], tuple[TrainState, Metrics]]


class LossWeights(NamedTuple):
    """The objective's numeric hyperparameters as a pytree: floats, or traced arrays in a sweep."""

    ce_weight: Any
    aux_weight: Any
    temperature: Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the objective is weighted; defaults are the tutorial's.

    `ce` trains on cross-entropy alone (weight 1, as the tutorial's `train()` does); the
    others minimise `ce_weight * CE + aux_weight * aux`.
    """

    objective: Objective = "ce"
    ce_weight: float = 0.75
    aux_weight: float = 0.25
    temperature: float = 2.0  # softmax temperature T of the KD objective

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.ce_weight < 0 or self.aux_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got ce_weight={self.ce_weight}, aux_weight={self.aux_weight}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def needs_teacher(self) -> bool:
        return self.objective != "ce"

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.ce_weight, self.aux_weight, self.temperature)


def create_train_state(
    model: nn.Module, key: jax.Array, *, learning_rate: float = 1e-3
) -> TrainState:
    """Initialise `model` from `key` and pair it with Adam(`learning_rate`), PyTorch's defaults."""
    variables = model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.adam(learning_rate))
    # A concrete int32 step (not Python's 0) keeps the first jitted call from compiling twice.
    return state.replace(step=jnp.zeros((), jnp.int32))


def _check_batch(batch: Batch) -> None:
    image, label = batch["image"], batch["label"]
    if image.ndim != 4 or tuple(image.shape[1:]) != IMAGE_SHAPE or label.shape != image.shape[:1]:
        raise ValueError(
            f"batch must hold image [batch, 32, 32, 3] and label [batch], "
            f"got {tuple(image.shape)} and {tuple(label.shape)}"
        )


def objective_loss(
    params: Any,
    teacher_outputs: ModelOutput | None,
    batch: Batch,
    dropout_key: jax.Array,
    *,
    apply_fn: Callable[..., ModelOutput],
    config: LossConfig,
    weights: LossWeights | None = None,
) -> tuple[jax.Array, Metrics]:
    """The weighted objective for one batch and its metrics.

    `teacher_outputs` are the teacher's inference-mode outputs for `batch["image"]`
    (None for `ce`); they are wrapped in `stop_gradient` here, so no gradient reaches the
    teacher whichever way they were computed. `weights` (default: `config.weights`) may be
    traced scalars, so that one compiled step serves a whole hyperparameter grid.
    """
    weights = config.weights if weights is None else weights
    where = batch.get("mask")
    outputs: ModelOutput = apply_fn(
        {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_key}
    )
    ce = losses.cross_entropy(outputs.logits, batch["label"], where=where)
    if config.objective == "ce":
        loss, aux = ce, jnp.zeros_like(ce)
    else:
        teacher_outputs = jax.lax.stop_gradient(teacher_outputs)
        if config.objective == "kd":
            aux = losses.kd_loss(
                outputs.logits, teacher_outputs.logits, temperature=weights.temperature, where=where
            )
        elif config.objective == "cosine":
            teacher_hidden = losses.avg_pool_pairs(teacher_outputs.hidden)
            aux = losses.cosine_loss(outputs.hidden, teacher_hidden, where=where)
        else:
            if outputs.regressed is None:
                raise ValueError("the hint objective needs a student built with LightNN(hint=True)")
            aux = losses.hint_loss(outputs.regressed, teacher_outputs.feature_map, where=where)
        loss = weights.ce_weight * ce + weights.aux_weight * aux
    correct = outputs.logits.argmax(-1) == batch["label"]
    if where is not None:
        correct = jnp.logical_and(correct, where)
    metrics = {"loss": loss, "ce_loss": ce, "aux_loss": aux, "correct": jnp.sum(correct)}
    return loss, metrics


def apply_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    teacher_outputs: ModelOutput | None,
    config: LossConfig,
    weights: LossWeights | None = None,
) -> tuple[TrainState, Metrics]:
    """One Adam step given the teacher's outputs for `batch` (the core of every train step).

    The dropout key is `fold_in(key, state.step)`; `weights` as in `objective_loss`.
    """
    dropout_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(objective_loss, has_aux=True)
    (_, metrics), grads = grad_fn(
        state.params, teacher_outputs, batch, dropout_key, apply_fn=state.apply_fn, config=config, weights=weights
    )
    return state.apply_gradients(grads=grads), metrics


def train_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    teacher_params: Any = None,
    *,
    config: LossConfig,
    teacher: nn.Module | None = None,
) -> tuple[TrainState, Metrics]:
    """One Adam step on `config`'s objective, running the teacher inside the step.

    Args:
      state: the student's (or, for `ce`, possibly the teacher's) train state.
      batch: see the module docstring.
      key: base PRNG key; the dropout key is `fold_in(key, state.step)`.
      teacher_params: the teacher's params for `kd`/`cosine`/`hint`; the teacher runs in
        inference mode (no dropout) under `stop_gradient`.
      config: the objective and its weights (static).
      teacher: the teacher module (static), `DeepNN()` by default.

    Returns:
      The new state and scalar metrics: `loss`, `ce_loss`, `aux_loss`, `correct`.
    """
    _check_batch(batch)
    teacher_outputs = None
    if config.needs_teacher:
        if teacher_params is None:
            raise ValueError(f"the {config.objective!r} objective needs teacher_params")
        teacher_outputs = (teacher or DeepNN()).apply(
            {"params": teacher_params}, batch["image"], train=False
        )
    return apply_step(state, batch, key, teacher_outputs, config)


def cached_train_step(
    state: TrainState, batch: Batch, key: jax.Array, teacher_cache: ModelOutput, *, config: LossConfig
) -> tuple[TrainState, Metrics]:
    """`train_step` reading the teacher's outputs from `teacher_cache` instead of running it.

    `teacher_cache` holds the teacher's inference-mode outputs for the whole split
    (`[n, ...]` per field; fields the objective does not read may be None), and
    `batch["index"]` says which rows belong to this batch. Valid only while the input
    pipeline maps each example to the same image every epoch (no augmentation).
    """
    _check_batch(batch)
    if "index" not in batch:
        raise ValueError("cached_train_step needs batch['index'], the examples' positions in the split")
    teacher_outputs = jax.tree.map(lambda field: field[batch["index"]], teacher_cache)
    return apply_step(state, batch, key, teacher_outputs, config)


def make_train_step(config: LossConfig, teacher: nn.Module | None = None, *, cached: bool = False) -> TrainStep:
    """`train_step` (or, with `cached`, `cached_train_step`) with static settings bound, jitted."""
    if cached:
        return jax.jit(functools.partial(cached_train_step, config=config))
    return jax.jit(functools.partial(train_step, config=config, teacher=teacher))


def eval_step(params: Any, batch: Batch, *, apply_fn: Callable[..., ModelOutput]) -> Metrics:
    """Inference-mode metrics for one batch, as sums so that batches add up exactly.

    Returns `correct` (count of right top-1 predictions), `loss_sum` (summed CE, nats) and
    `count` (examples included, honouring `mask`).
    """
    _check_batch(batch)
    outputs: ModelOutput = apply_fn({"params": params}, batch["image"], train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, bool))
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(outputs.logits, batch["label"])
    correct = jnp.logical_and(outputs.logits.argmax(-1) == batch["label"], mask)
    return {
        "correct": jnp.sum(correct),
        "loss_sum": jnp.sum(jnp.where(mask, per_example, 0.0)),
        "count": jnp.sum(mask),
    }


def make_eval_step(model: nn.Module) -> Callable[[Any, Batch], Metrics]:
    """`eval_step` for `model`, jitted."""
    return jax.jit(functools.partial(eval_step, apply_fn=model.apply))
