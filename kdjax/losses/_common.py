"""Checks and numerics shared by the loss modules: shapes, masks, reductions, log-space KL."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Reduction = Literal["mean", "none"]
# torch.nn.functional.cosine_embedding_loss adds this to each squared norm (ATen's EPSILON).
TORCH_COSINE_EPSILON = 1e-12
TORCH_NORMALIZE_EPSILON = 1e-12  # F.normalize's default eps: the norm is clamped to at least this


def _floating(name: str, *arrays: ArrayLike) -> list[jax.Array]:
    out = []
    for array in arrays:
        array = jnp.asarray(array)
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(f"{name}: expected floating-point arrays, got dtype {array.dtype}")
        out.append(array)
    return out


def _same_shape(name: str, a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes must match exactly (no broadcasting), got {a.shape} and {b.shape}")


def _float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask(name: str, where: ArrayLike | None, shape: tuple[int, ...]) -> jax.Array | None:
    """`where` as a boolean array of `shape`, or None; a non-boolean mask is an error."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{name}: `where` must be boolean, got {where.dtype}; pass e.g. `mask > 0` (a float mask "
                        "would be read as a boolean and weights are not supported: use reduction='none')")
    if where.shape != tuple(shape):
        raise ValueError(f"{name}: `where` must have shape {tuple(shape)}, got {where.shape}")
    return where


def _zero_outside(where: jax.Array | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Zero the positions outside `where` (leading axes) so that not even a NaN reaches the gradient."""
    if where is None:
        return arrays
    return tuple(jnp.where(where.reshape(where.shape + (1,) * (x.ndim - where.ndim)), x, 0) for x in arrays)


def _reduce(name: str, values: jax.Array, where: jax.Array | None, reduction: Reduction) -> jax.Array:
    if reduction == "none":
        return values if where is None else jnp.where(where, values, 0.0)
    if reduction != "mean":
        raise ValueError(f"{name}: reduction must be 'mean' or 'none', got {reduction!r}")
    if where is None:
        return jnp.mean(values)
    return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(jnp.sum(where), 1)


def _positive(name: str, option: str, value: ArrayLike) -> None:
    """Raise if a concrete `value` is not > 0 (a traced one cannot be checked here: validate it before tracing)."""
    if isinstance(value, jax.core.Tracer):
        return
    array = np.asarray(value)
    if array.size and not (np.all(np.isfinite(array)) and np.all(array > 0)):
        raise ValueError(f"{name}: {option} must be finite and > 0, got {value}")


def _logits_pair(name: str, student: ArrayLike, teacher: ArrayLike, axis: int) -> tuple[jax.Array, jax.Array]:
    student, teacher = _floating(name, student, teacher)
    _same_shape(name, student, teacher)
    if student.ndim < 1:
        raise ValueError(f"{name}: expected logits [..., classes], got a scalar")
    return _float32(jnp.moveaxis(student, axis, -1)), _float32(jnp.moveaxis(teacher, axis, -1))


def _safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """L2 norm whose gradient at 0 is 0 (jnp.linalg.norm's is NaN there)."""
    squared = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """`F.normalize(x, dim=axis)`: x / max(||x||, 1e-12), finite gradients at 0."""
    return x / jnp.maximum(_safe_norm(x, axis, keepdims=True), TORCH_NORMALIZE_EPSILON)


def _kl_from_logs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """sum_c p (log p - log q) over the last axis, in value and gradient finite wherever it is finite.

    Classes outside p's support (log p = -inf: a `-inf` logit, a class the teacher rules out)
    contribute exactly 0 with zero gradient, where `p * (log p - log q)` evaluates 0 * -inf = NaN
    (as optax's `kl_divergence_with_log_targets` does). The double `where` keeps the masked
    branch's NaN out of the gradient. log q = -inf inside p's support gives +inf, as it should.
    """
    support = log_p > -jnp.inf
    safe_p = jnp.where(support, log_p, 0.0)
    safe_q = jnp.where(support, log_q, 0.0)
    return jnp.sum(jnp.where(support, jnp.exp(safe_p) * (safe_p - safe_q), 0.0), axis=-1)


def _features_pair(name: str, student: ArrayLike, teacher: ArrayLike, same_shape: bool = True):
    student, teacher = _floating(name, student, teacher)
    if same_shape:
        _same_shape(name, student, teacher)
    if student.ndim < 1 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: expected [batch, ...] arrays with the same batch, got {student.shape} and "
                         f"{teacher.shape}")
    return _float32(student), _float32(teacher)
