"""Feature losses on `[batch, ...]` activations: cosine embedding, FitNets hint, attention transfer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from kdjax.losses._common import (TORCH_COSINE_EPSILON, Reduction, _features_pair, _mask, _normalize, _reduce,
                                  _zero_outside)


def cosine_loss(student_hidden: ArrayLike, teacher_hidden: ArrayLike, *, where: ArrayLike | None = None,
                reduction: Reduction = "mean") -> jax.Array:
    """1 - cos(student, teacher) per row: `torch.nn.CosineEmbeddingLoss()` with target +1.

    cos = <a, b> / sqrt((|a|² + 1e-12)(|b|² + 1e-12)) exactly as ATen computes it, so an
    all-zero row gives cos = 0 with finite gradients (`optax.losses.cosine_similarity`
    clamps each norm instead, which differs from PyTorch).

    Args:
      student_hidden, teacher_hidden: `[batch, features]`.
      where: optional boolean `[batch]`.
    """
    student, teacher = _features_pair("cosine_loss", student_hidden, teacher_hidden)
    if student.ndim != 2:
        raise ValueError(f"cosine_loss: expected [batch, features], got {student.shape}")
    where = _mask("cosine_loss", where, student.shape[:1])
    student, teacher = _zero_outside(where, student, teacher)
    dot = jnp.sum(student * teacher, axis=-1)
    student_sq = jnp.sum(student * student, axis=-1) + TORCH_COSINE_EPSILON
    teacher_sq = jnp.sum(teacher * teacher, axis=-1) + TORCH_COSINE_EPSILON
    return _reduce("cosine_loss", 1.0 - dot / jnp.sqrt(student_sq * teacher_sq), where, reduction)


def hint_loss(student_regressed: ArrayLike, teacher_features: ArrayLike, *, where: ArrayLike | None = None,
              reduction: Reduction = "mean") -> jax.Array:
    """FitNets hint (Romero et al. 2015): mean squared error, `torch.nn.MSELoss()`.

    Args:
      student_regressed: `[batch, ...]`, e.g. the regressor's `[batch, 8, 8, 32]`.
      teacher_features: the same shape.
      where: optional boolean `[batch]`.

    Returns:
      Scalar mean over all included elements, or `[batch]` per-example means.
    """
    student, teacher = _features_pair("hint_loss", student_regressed, teacher_features)
    where = _mask("hint_loss", where, student.shape[:1])
    student, teacher = _zero_outside(where, student, teacher)
    squared = optax.losses.squared_error(student, teacher)
    return _reduce("hint_loss", jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1), where, reduction)


def avg_pool_pairs(hidden: ArrayLike) -> jax.Array:
    """Average adjacent pairs, `[batch, 2k] -> [batch, k]`: the tutorial's `avg_pool1d(x, 2)`."""
    hidden = jnp.asarray(hidden)
    if hidden.ndim != 2 or hidden.shape[-1] % 2:
        raise ValueError(f"avg_pool_pairs: expected [batch, even features], got {hidden.shape}")
    return hidden.reshape(hidden.shape[0], -1, 2).mean(axis=-1)


def attention_transfer_loss(student_features: ArrayLike, teacher_features: ArrayLike, *, p: float = 2.0,
                            where: ArrayLike | None = None, reduction: Reduction = "mean") -> jax.Array:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as its code and mdistiller compute it.

    Each map's attention is the channel mean of f^p, flattened over H x W and L2-normalised
    (`F.normalize`); the loss is the mean squared difference of the two attentions. An
    all-zero map has attention 0 with finite gradients.

    Args:
      student_features, teacher_features: NHWC `[batch, h, w, c]`, equal h and w; channels may differ.
      where: optional boolean `[batch]`.

    Returns:
      Scalar mean over included examples and positions, or `[batch]` per-example means.
    """
    student, teacher = _features_pair("attention_transfer_loss", student_features, teacher_features,
                                      same_shape=False)
    if student.ndim != 4 or teacher.ndim != 4 or student.shape[1:3] != teacher.shape[1:3]:
        raise ValueError(f"attention_transfer_loss: expected NHWC maps with equal height and width, got "
                         f"{student.shape} and {teacher.shape}")
    where = _mask("attention_transfer_loss", where, student.shape[:1])
    student, teacher = _zero_outside(where, student, teacher)

    def attention(features):
        powered = features ** int(p) if float(p).is_integer() else features**p  # integer powers keep the sign rules
        return _normalize(jnp.mean(powered, axis=-1).reshape(features.shape[0], -1))

    per_example = jnp.mean((attention(student) - attention(teacher)) ** 2, axis=-1)
    return _reduce("attention_transfer_loss", per_example, where, reduction)


def flatten_channel_major(feature_map: jax.Array) -> jax.Array:
    """`[n, h, w, c] -> [n, c*h*w]` in PyTorch's `torch.flatten(x, 1)` order on NCHW."""
    n = feature_map.shape[0]
    return jnp.transpose(feature_map, (0, 3, 1, 2)).reshape(n, -1)
