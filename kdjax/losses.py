"""Distillation losses: pure functions of arrays, each reduced to a scalar batch mean.

Every loss takes arrays first and options keyword-only, accepts an optional boolean
`where` of shape `[batch]` (examples outside it contribute nothing to the value or the
gradient; the mean is over the examples inside it), checks shapes at trace time, and is
safe under `jax.jit`, `jax.grad` and `jax.vmap`.

References: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network";
Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"; the PyTorch Knowledge
Distillation Tutorial, whose formulas these reproduce.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

# torch.nn.functional.cosine_embedding_loss adds this to each squared norm (ATen's EPSILON).
TORCH_COSINE_EPSILON = 1e-12


def _check_same_shape(name: str, a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: shapes must match exactly (no broadcasting), got {a.shape} and {b.shape}"
        )


def _check_floating(name: str, *arrays: jax.Array) -> None:
    for array in arrays:
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(f"{name}: expected floating-point arrays, got dtype {array.dtype}")


def _apply_mask(name: str, where: ArrayLike | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Zero the examples outside `where` so that nothing from them (not even a NaN) reaches
    the value or the gradient; `where * f(x)` alone would still let NaN gradients through."""
    if where is None:
        return arrays
    where = jnp.asarray(where)
    batch = arrays[0].shape[:1]
    if where.shape != batch:
        raise ValueError(f"{name}: `where` must have shape {batch}, got {where.shape}")
    keep = where.astype(bool)
    return tuple(jnp.where(keep.reshape(batch + (1,) * (x.ndim - 1)), x, 0) for x in arrays)


def _masked_mean(per_example: jax.Array, where: ArrayLike | None) -> jax.Array:
    """Mean of `[batch]` values over `where`; 0 when `where` selects nothing."""
    if where is None:
        return jnp.mean(per_example)
    keep = jnp.asarray(where).astype(bool)
    total = jnp.sum(jnp.where(keep, per_example, 0.0))
    return total / jnp.maximum(jnp.sum(keep), 1)


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None) -> jax.Array:
    """Mean softmax cross-entropy with integer labels, `torch.nn.CrossEntropyLoss()`.

    Args:
      logits: `[batch, classes]` unnormalised scores.
      labels: `[batch]` integer class indices in `[0, classes)`.
      where: optional `[batch]` mask of examples to include.

    Returns:
      Scalar mean over the batch, in nats.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_floating("cross_entropy", logits)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: expected logits [batch, classes] and labels [batch], "
            f"got {logits.shape} and {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    logits, labels = _apply_mask("cross_entropy", where, logits, labels)
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _masked_mean(per_example, where)


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 2.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    """Hinton distillation loss: batch-mean KL(softmax(t/T) || softmax(s/T)) * T**2.

    The T**2 factor keeps the soft-target gradients on the scale of the hard-label ones.
    Computed in log space (`optax.losses.kl_divergence_with_log_targets` on two `log_softmax`es),
    so a teacher whose softmax underflows to 0 in some class contributes exactly 0 there
    instead of the NaN that the naive `p * (log p - log q)` gives. Teacher logits must be
    finite.

    The tutorial writes `sum(p * (log p - log q)) / batch * T**2`, the same quantity. Its
    older cross-entropy form `-sum(p * log q) / batch * T**2` differs from this one by
    the teacher's entropy, a constant with respect to the student: same gradients.

    Args:
      student_logits: `[batch, classes]`.
      teacher_logits: `[batch, classes]`; not differentiated through by the train steps,
        which wrap it in `jax.lax.stop_gradient`.
      temperature: T > 0, the softmax temperature.
      where: optional `[batch]` mask of examples to include.

    Returns:
      Scalar, in nats * T**2.
    """
    student_logits, teacher_logits = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
    _check_floating("kd_loss", student_logits, teacher_logits)
    _check_same_shape("kd_loss", student_logits, teacher_logits)
    if student_logits.ndim != 2:
        raise ValueError(f"kd_loss: expected logits [batch, classes], got {student_logits.shape}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    student_logits, teacher_logits = _apply_mask("kd_loss", where, student_logits, teacher_logits)
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    per_example = optax.losses.kl_divergence_with_log_targets(log_student, log_teacher)
    return _masked_mean(per_example, where) * temperature**2


def cosine_loss(
    student_hidden: ArrayLike, teacher_hidden: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
    """Mean of 1 - cos(student, teacher): `torch.nn.CosineEmbeddingLoss()` with target +1.

    cos = <a, b> / sqrt((|a|^2 + eps) * (|b|^2 + eps)) with eps = 1e-12, exactly as ATen
    computes it, so an all-zero row (a dead ReLU) gives cos = 0: loss 1 for that row with
    finite gradients. Written by hand because `optax.losses.cosine_similarity` clamps each norm
    separately instead of adding eps to the squared norms, which differs from PyTorch.

    Args:
      student_hidden: `[batch, features]`.
      teacher_hidden: `[batch, features]`, e.g. the teacher's 2048-d vector pooled to 1024-d
        with `avg_pool_pairs`.
      where: optional `[batch]` mask of examples to include.

    Returns:
      Scalar in [0, 2].
    """
    student_hidden, teacher_hidden = jnp.asarray(student_hidden), jnp.asarray(teacher_hidden)
    _check_floating("cosine_loss", student_hidden, teacher_hidden)
    _check_same_shape("cosine_loss", student_hidden, teacher_hidden)
    if student_hidden.ndim != 2:
        raise ValueError(f"cosine_loss: expected [batch, features], got {student_hidden.shape}")
    student_hidden, teacher_hidden = _apply_mask("cosine_loss", where, student_hidden, teacher_hidden)
    dot = jnp.sum(student_hidden * teacher_hidden, axis=-1)
    student_sq = jnp.sum(student_hidden * student_hidden, axis=-1) + TORCH_COSINE_EPSILON
    teacher_sq = jnp.sum(teacher_hidden * teacher_hidden, axis=-1) + TORCH_COSINE_EPSILON
    cos = dot / jnp.sqrt(student_sq * teacher_sq)
    return _masked_mean(1.0 - cos, where)


def hint_loss(
    student_regressed: ArrayLike, teacher_features: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
    """FitNets hint: mean squared error over every element, `torch.nn.MSELoss()`.

    Args:
      student_regressed: `[batch, ...]`, the regressor's output, e.g. `[batch, 8, 8, 32]`.
      teacher_features: same shape, the teacher's feature map.
      where: optional `[batch]` mask of examples to include.

    Returns:
      Scalar, mean over all included elements.
    """
    student_regressed, teacher_features = jnp.asarray(student_regressed), jnp.asarray(teacher_features)
    _check_floating("hint_loss", student_regressed, teacher_features)
    _check_same_shape("hint_loss", student_regressed, teacher_features)
    if student_regressed.ndim < 1:
        raise ValueError("hint_loss: expected arrays with a leading batch axis, got scalars")
    student_regressed, teacher_features = _apply_mask("hint_loss", where, student_regressed, teacher_features)
    squared = optax.losses.squared_error(student_regressed, teacher_features)
    # Mean per example first; every example has the same element count, so the batch mean
    # of these equals the mean over all elements.
    per_example = jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)
    return _masked_mean(per_example, where)


def avg_pool_pairs(hidden: ArrayLike) -> jax.Array:
    """Average adjacent pairs, `[batch, 2k] -> [batch, k]`: the tutorial's `avg_pool1d(x, 2)`.

    Applied to the teacher's channel-major 2048-d vector it gives the 1024-d target of the
    cosine objective.
    """
    hidden = jnp.asarray(hidden)
    if hidden.ndim != 2 or hidden.shape[-1] % 2:
        raise ValueError(f"avg_pool_pairs: expected [batch, even features], got {hidden.shape}")
    return hidden.reshape(hidden.shape[0], -1, 2).mean(axis=-1)
