"""One member's train state and its pure, jittable train and eval steps.

A member trains a student `Network` on a `Method` (`kdjax.methods`). Its params are
`{"model": student params, "adapter": adapter params}` (the adapter only for methods that
declare one). A batch is a dict: `image` `[batch, *input_shape]` float32, `label` `[batch]`
int32, and optionally `mask` `[batch]` bool marking real (non-padding) examples. Nothing
here reads files or prints; `kdjax.loop` runs these steps for N members on a device mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training.train_state import TrainState

from kdjax import losses
from kdjax.methods import Context, Method
from kdjax.network import Network

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TeacherOutputs = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """What a member minimises: `method` on `student`, with the method's adapter built for this pair."""

    method: Method
    student: Network
    adapter: nn.Module | None = None


def build_objective(method: Method, student: Network, teacher: Network | None = None) -> Objective:
    """Check that `student` and `teacher` have the roles `method` reads, and build its adapter."""
    if method.needs_teacher and teacher is None:
        raise ValueError(f"method {method.name!r} needs a teacher network")
    if teacher is not None and method.roles:
        teacher.output_shapes(method.roles)  # raises, naming the missing role
    adapter = None
    if method.adapter is not None:
        student_shape = student.output_shapes([method.adapted])[method.adapted]
        teacher_shape = teacher.output_shapes([method.adapted])[method.adapted]
        adapter = method.adapter(student_shape, teacher_shape)
    elif method.roles:
        student.output_shapes(method.roles)
    return Objective(method, student, adapter)


def init_params(objective: Objective, key: jax.Array) -> dict[str, Any]:
    """`{"model": ..., ["adapter": ...]}` from `key`; the same key gives the same model params for every method.

    The network's initialiser is jitted (one compiled program per network, values as run eagerly):
    eagerly, every parameter's random draw would be compiled on its own.
    """
    params = {"model": jax.jit(objective.student.init)(key)}
    if objective.adapter is not None:
        shape = objective.student.output_shapes([objective.method.adapted], batch=1)[objective.method.adapted]
        params["adapter"] = objective.adapter.init(key, jnp.zeros(shape, jnp.float32))["params"]
    return params


def create_train_state(objective: Objective, key: jax.Array, *, learning_rate: float = 1e-3) -> TrainState:
    """Params from `key` paired with Adam(`learning_rate`) (PyTorch's default betas and eps)."""
    state = TrainState.create(apply_fn=None, params=init_params(objective, key), tx=optax.adam(learning_rate))
    return state.replace(step=jnp.zeros((), jnp.int32))  # a concrete int32: the first jitted call compiles once


def check_batch(network: Network, batch: Batch) -> None:
    image, label = batch["image"], batch["label"]
    if tuple(image.shape[1:]) != network.input_shape or label.shape != image.shape[:1]:
        raise ValueError(f"{network.name} takes image [batch, {', '.join(map(str, network.input_shape))}] and "
                         f"label [batch], got {tuple(image.shape)} and {tuple(label.shape)}")


def teacher_outputs(teacher: Network, params: Any, images: jax.Array, method_reads: tuple[str, ...]) -> dict:
    """The teacher's inference-mode `{"logits": ..., role: ...}` for what a method reads."""
    roles = tuple(role for role in method_reads if role != "logits")
    logits, outs = teacher.forward(params, images, train=False, roles=roles)
    return {"logits": logits, **outs}


def objective_loss(
    params: Any, batch: Batch, dropout_key: jax.Array, teacher: TeacherOutputs | None,
    hyperparameters: Mapping[str, jax.Array], *, objective: Objective, step: jax.Array | int = 0,
) -> tuple[jax.Array, Metrics]:
    """The weighted objective for one batch and its metrics (`step`: the optimiser step, for warm-ups).

    `teacher` holds the teacher's outputs for `batch["image"]` (None for methods without a
    loss); they are wrapped in `stop_gradient` here, however they were computed.
    """
    method, where, labelled = objective.method, batch.get("mask"), batch.get("labelled")
    logits, outs = objective.student.forward(params["model"], batch["image"], train=True, key=dropout_key,
                                             roles=method.roles)
    ce_where = where if labelled is None else labelled if where is None else jnp.logical_and(where, labelled)
    ce = losses.cross_entropy(logits, batch["label"], where=ce_where)
    if method.loss is None:
        loss, aux = ce, jnp.zeros_like(ce)
    else:
        student = {"logits": logits, **outs}
        if objective.adapter is not None:
            student[method.adapted] = objective.adapter.apply({"params": params["adapter"]}, student[method.adapted])
        context = Context(batch["label"], where, jnp.asarray(step, jnp.int32))
        aux = method.loss(student, jax.lax.stop_gradient(dict(teacher)), hyperparameters, context)
        loss = hyperparameters["ce_weight"] * ce + hyperparameters["aux_weight"] * aux
    correct = logits.argmax(-1) == batch["label"]
    if where is not None:
        correct = jnp.logical_and(correct, where)
    return loss, {"loss": loss, "ce_loss": ce, "aux_loss": aux, "correct": jnp.sum(correct)}


def train_step(
    state: TrainState, batch: Batch, key: jax.Array, teacher: TeacherOutputs | None,
    hyperparameters: Mapping[str, jax.Array], *, objective: Objective,
) -> tuple[TrainState, Metrics]:
    """One Adam step; the dropout key is `fold_in(key, state.step)`.

    Returns the new state and scalar metrics `loss`, `ce_loss`, `aux_loss`, `correct`.
    """
    check_batch(objective.student, batch)
    if objective.method.needs_teacher and teacher is None:
        raise ValueError(f"method {objective.method.name!r} needs the teacher's outputs")
    grad_fn = jax.value_and_grad(objective_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, jax.random.fold_in(key, state.step), teacher,
                                  hyperparameters, objective=objective, step=state.step)
    return state.apply_gradients(grads=grads), metrics


def eval_step(params: Any, batch: Batch, *, network: Network) -> Metrics:
    """Inference-mode sums for one batch, so that batches add up exactly.

    `params` are the model's (`state.params["model"]`). Returns `correct` (right top-1
    predictions), `loss_sum` (summed CE, nats) and `count` (examples included, honouring `mask`).
    """
    check_batch(network, batch)
    logits, _ = network.forward(params, batch["image"], train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, bool))
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "correct": jnp.sum(jnp.logical_and(logits.argmax(-1) == batch["label"], mask)),
        "loss_sum": jnp.sum(jnp.where(mask, per_example, 0.0)),
        "count": jnp.sum(mask),
    }
