"""Distillation inside your own training loop: a method's loss for one batch, or a pure `init` / `step` pair.

    distiller = kdjax.distill.Distiller(student, teacher, "kd", optax.adam(1e-3), temperature=4.0)
    state = distiller.init(jax.random.key(0), teacher_variables)
    step = jax.jit(distiller.step)
    state, metrics = step(state, {"inputs": images, "label": labels})

`student` and `teacher` are `kdjax.network.Network`s (`linen_network`, `nnx_network`, or the
zoo's): any Flax model, with or without model state (BatchNorm's statistics train in the
student and stay frozen in the teacher). The step is the engine's own per-member step
(`kdjax.train.train_step`): the same loss, gradient and update for the same batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from kdjax import methods
from kdjax.methods import TOPK_READ, Method
from kdjax.network import Network
from kdjax.on_policy import on_policy_batch, sampling_key
from kdjax.teacher import Teacher
from kdjax.train import Batch, Metrics, Objective, TrainState, build_objective, create_train_state, train_step
from kdjax.train import init_keys, weighted_loss


def distillation_loss(method: Method | str, student: Mapping[str, jax.Array], teacher: Mapping[str, jax.Array] | None,
                      labels: jax.Array, *, where: jax.Array | None = None, step: jax.Array | int = 0,
                      **hyperparameters: float | jax.Array) -> jax.Array:
    """`ce_weight * CE + aux_weight * method's term` for one batch (CE alone for `"ce"`), a scalar.

    Args:
      method: a `kdjax.methods.Method` or a registered name (`"kd"`, `"dkd"`, `"hint"`, ...).
      student, teacher: `{"logits": [batch, classes] (or [batch, time, vocab]), role: array}` for each role the
        method reads (`method.reads`); the teacher's go under `stop_gradient`. None for `"ce"`.
      labels: `[batch]` int (`[batch, time]` next tokens).
      where: the labels' shape, bool: positions that count.
      step: the optimiser step, for methods that warm up (DKD).
      **hyperparameters: overrides of the method's defaults (`temperature=4.0`); unknown names are refused.
    """
    method = methods.method_of(method)
    values = {**method.resolve({k: float(v) for k, v in hyperparameters.items() if not isinstance(v, jax.Array)}),
              **{k: v for k, v in hyperparameters.items() if isinstance(v, jax.Array)}}
    loss, _, _ = weighted_loss(method, student, teacher, labels, values, where=where, step=step)
    return loss


@struct.dataclass
class DistillState:
    """What a distillation step advances: the student's train state (`params`, `model_state`, `opt_state`, `step`,
    each `{"model": ..., ["adapter": ...]}`), the frozen teacher, the hyperparameters (float32 scalars, traced: vmap
    over them to sweep) and the root of the dropout keys."""

    student: TrainState
    teacher: Teacher | None
    hyperparameters: dict[str, jax.Array]
    key: jax.Array


class Distiller:
    """`method` from `teacher` into `student`, optimised by `optimizer`; `hyperparameters` override the method's
    defaults (checked: unknown names and invalid values are refused here, not inside a trace)."""

    def __init__(self, student: Network, teacher: Network | None, method: Method | str,
                 optimizer: optax.GradientTransformation, **hyperparameters: float):
        method = methods.method_of(method)
        for name, value in (("student", student), ("teacher", teacher)):
            if value is not None and not isinstance(value, Network):
                raise TypeError(f"{name} must be a kdjax Network (kdjax.network.linen_network / nnx_network, or "
                                f"kdjax.zoo.network), got {type(value).__name__}")
        self.student, self.teacher, self.optimizer = student, teacher, optimizer
        self.hyperparameters = method.resolve(hyperparameters)
        self.objective: Objective = build_objective(method, student,
                                                    teacher if method.needs_teacher_network else None)

    def init(self, key: jax.Array, teacher_variables: tuple[Any, Any] | None = None) -> DistillState:
        """The student's initial state from `key` beside the teacher's `(params, state)` (`{}` for a stateless
        teacher). `key(seed)` gives the engine's member of that seed: the same weights and dropout keys."""
        teacher = None
        if self.objective.method.needs_teacher_network:
            if teacher_variables is None:
                raise ValueError(f"{self.objective.method.name} needs the teacher's (params, state)")
            teacher = Teacher(self.teacher, *teacher_variables)
        init_key, _, dropout_key = init_keys(key)
        student = create_train_state(self.objective, init_key, tx=self.optimizer)
        hyperparameters = {name: jnp.float32(value) for name, value in self.hyperparameters.items()}
        return DistillState(student, teacher, hyperparameters, dropout_key)

    def step(self, state: DistillState, batch: Batch) -> tuple[DistillState, Metrics]:
        """One optimiser step on `batch` (`inputs`, `label`, optionally `mask`; for a method of stored top-k
        logits, `topk`: the teacher's `TopKLogits` for these inputs); pure and jittable. An on-policy method
        samples its continuations with a key of `state.key` and the step.

        Returns the new state and scalar metrics: `loss`, `ce_loss`, `aux_loss`, `correct` (right top-1
        predictions) and `finite`.
        """
        method, reads = self.objective.method, self.objective.teacher_reads
        if method.sampling is not None:  # on-policy: the student's own continuations, maybe (`kdjax.on_policy`)
            key = sampling_key(state.key, 0, state.student.step)
            batch = on_policy_batch(self.student, method.sampling, *self.variables(state), batch, key,
                                    state.hyperparameters)
        if reads == (TOPK_READ,):
            if TOPK_READ not in batch:
                raise ValueError(f"{method.name} reads the teacher's stored top-k from the batch: give "
                                 f"batch['{TOPK_READ}'] = kdjax.losses.topk.TopKLogits(values, indices) [batch, time, k]")
            outputs = {TOPK_READ: batch[TOPK_READ]}
        else:
            outputs = state.teacher.outputs(batch, reads) if reads else None
        student, metrics = train_step(state.student, batch, state.key, outputs, state.hyperparameters,
                                      objective=self.objective)
        return state.replace(student=student), metrics

    def variables(self, state: DistillState) -> tuple[Any, Any]:
        """The student's `(params, state)`: what its network's `forward` takes, or a later teacher runs on."""
        return state.student.params["model"], state.student.model_state["model"]
