"""Distillation from a teacher's top-k logits: what an offline teacher cache stores instead of `[..., vocab]`.

The teacher's distribution is its softmax **renormalised over its k entries** (zero
elsewhere); the student's is its softmax over the whole vocabulary, read at the teacher's
indices. Each loss therefore equals its dense form with the teacher's other logits set to
`-inf`: `topk_kd_loss(s, v, i) == kd_loss(s, t)` where `t = full(-inf).at[i].set(v)`. This is
the convention of MaxText's and Tunix's top-k distillation (renormalise the teacher, not
the student); a student that puts mass outside the teacher's top k is penalised through
its own normaliser.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kdjax.losses._common import Reduction, _float32, _floating, _kl_from_logs, _mask, _positive, _reduce, _zero_outside
from kdjax.losses.logits import check_beta, generalized_jsd_from_logs


class TopKLogits(NamedTuple):
    """A teacher's `k` largest logits `[..., k]` (in descending order) and their vocabulary indices `[..., k]`:
    what an offline top-k teacher stores per token (`kdjax.offline`)."""

    values: jax.Array
    indices: jax.Array

    def first(self, k: jax.Array | int) -> TopKLogits:
        """The `k` largest only (`k <= 0`: all), as `-inf` beyond them: the teacher renormalised over its top `k`
        (`k` may be traced; the stored entries are in descending order)."""
        keep = (k <= 0) | (jnp.arange(self.values.shape[-1]) < k)
        return TopKLogits(jnp.where(keep, self.values.astype(jnp.float32), -jnp.inf), self.indices)


def check_topk(name: str, student: jax.Array, values: jax.Array, indices: jax.Array) -> None:
    """Shapes `[..., vocab]`, `[..., k]`, `[..., k]`; integer indices in `[0, vocab)` where they are concrete."""
    if values.shape != indices.shape or student.shape[:-1] != values.shape[:-1]:
        raise ValueError(f"{name}: expected student logits [..., vocab] and teacher top-k logits and indices [..., k] "
                         f"with the same leading axes, got {student.shape}, {values.shape} and {indices.shape}")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"{name}: teacher top-k indices must be integers, got dtype {indices.dtype}")
    vocab = student.shape[-1]
    if values.shape[-1] > vocab:
        raise ValueError(f"{name}: k = {values.shape[-1]} exceeds the student's vocabulary of {vocab}")
    if not isinstance(indices, jax.core.Tracer):
        concrete = np.asarray(indices)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= vocab):
            raise ValueError(f"{name}: teacher top-k indices must be in [0, {vocab}), got values in "
                             f"[{concrete.min()}, {concrete.max()}]")


def topk_log_probs(student: jax.Array, values: jax.Array, indices: jax.Array,
                   temperature: float) -> tuple[jax.Array, jax.Array]:
    """(student log-probs at the indices, teacher log-probs renormalised over k), both `[..., k]` float32."""
    log_s = jax.nn.log_softmax(student / temperature)
    return jnp.take_along_axis(log_s, indices, axis=-1), jax.nn.log_softmax(values / temperature)


def topk_kd_per_position(student: jax.Array, values: jax.Array, indices: jax.Array, temperature: float) -> jax.Array:
    log_s, log_t = topk_log_probs(student, values, indices, temperature)
    return _kl_from_logs(log_t, log_s) * temperature**2


def topk_generalized_jsd_per_position(student: jax.Array, values: jax.Array, indices: jax.Array, beta: float,
                                      temperature: float) -> jax.Array:
    log_s, log_t = topk_log_probs(student, values, indices, temperature)
    inside = generalized_jsd_from_logs(log_s, log_t, beta)
    if beta == 0.0:
        return inside
    # Outside the teacher's support the mixture is (1 - β) p_s, so each such class adds
    # (1 - β) p_s log(1 / (1 - β)): the student's mass outside the top k times a constant.
    mass_inside = jnp.exp(jnp.minimum(jax.nn.logsumexp(log_s, axis=-1), 0.0))
    return inside - (1 - beta) * jnp.log1p(-beta) * (1.0 - mass_inside)


def _topk_inputs(name: str, student_logits, teacher_topk_logits, teacher_topk_indices, where, temperature):
    _positive(name, "temperature", temperature)
    student, values = _floating(name, student_logits, teacher_topk_logits)
    indices = jnp.asarray(teacher_topk_indices)
    check_topk(name, student, values, indices)
    where = _mask(name, where, student.shape[:-1])
    student, values, indices = _zero_outside(where, _float32(student), _float32(values), indices)
    return student, values, indices, where


def topk_kd_loss(student_logits: ArrayLike, teacher_topk_logits: ArrayLike, teacher_topk_indices: ArrayLike, *,
                 temperature: float = 2.0, where: ArrayLike | None = None,
                 reduction: Reduction = "mean") -> jax.Array:
    """Hinton KD against a top-k teacher: T² KL(renormalised top-k teacher || student), as `kd_loss`.

    Args:
      student_logits: `[..., vocab]`.
      teacher_topk_logits: `[..., k]`, e.g. `jax.lax.top_k(teacher_logits, k)[0]`; `-inf` allowed.
      teacher_topk_indices: `[..., k]` distinct integers in `[0, vocab)` (distinctness is not checked).
      temperature: T > 0, applied to both before the softmaxes.
      where: optional boolean `[...]`.

    Returns:
      Nats * T²: scalar mean over included positions, or `[...]` with `reduction="none"`.
    """
    student, values, indices, where = _topk_inputs("topk_kd_loss", student_logits, teacher_topk_logits,
                                                   teacher_topk_indices, where, temperature)
    return _reduce("topk_kd_loss", topk_kd_per_position(student, values, indices, temperature), where, reduction)


def topk_generalized_jsd_loss(student_logits: ArrayLike, teacher_topk_logits: ArrayLike,
                              teacher_topk_indices: ArrayLike, *, beta: float = 0.5, temperature: float = 1.0,
                              where: ArrayLike | None = None, reduction: Reduction = "mean") -> jax.Array:
    """GKD's generalised JSD against a top-k teacher, as `generalized_jsd_loss` with the teacher zero outside k.

    The student's mass outside the teacher's top k enters in closed form, so the value is
    exact without a `[..., vocab]` teacher. β = 1 (reverse KL) is infinite whenever the student
    puts any mass outside the top k, so it is refused; `beta` must be a Python float.

    Args:
      student_logits: `[..., vocab]`.
      teacher_topk_logits, teacher_topk_indices: `[..., k]`, as in `topk_kd_loss`.
      beta: in [0, 1).
      where: optional boolean `[...]`.
    """
    name = "topk_generalized_jsd_loss"
    if isinstance(beta, jax.core.Tracer):
        raise TypeError(f"{name}: beta must be a Python float (the top-k form branches on it), got a traced value")
    check_beta(name, beta)
    if float(beta) == 1.0:
        raise ValueError(f"{name}: beta = 1 (reverse KL) is infinite against a top-k teacher whenever the student "
                         "puts mass outside the teacher's k entries; use beta < 1 or the dense generalized_jsd_loss")
    student, values, indices, where = _topk_inputs(name, student_logits, teacher_topk_logits, teacher_topk_indices,
                                                   where, temperature)
    per_position = topk_generalized_jsd_per_position(student, values, indices, float(beta), temperature)
    return _reduce(name, per_position, where, reduction)
