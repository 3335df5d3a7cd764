"""Relational (batch-coupled) losses: RKD distance and angle, PKT, similarity preserving."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kdjax.losses._common import TORCH_NORMALIZE_EPSILON, _features_pair, _mask, _normalize, _safe_norm, _zero_outside

def _relational_pair(name: str, student: ArrayLike, teacher: ArrayLike, where: ArrayLike | None):
    student, teacher = _features_pair(name, student, teacher, same_shape=False)
    batch = student.shape[0]
    where = _mask(name, where, (batch,))
    keep = jnp.ones((batch,), bool) if where is None else where
    student, teacher = _zero_outside(where, student, teacher)
    return student.reshape(batch, -1), teacher.reshape(batch, -1), keep


def _smooth_l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """`F.smooth_l1_loss(reduction='none')` with beta 1."""
    diff = jnp.abs(a - b)
    return jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5)


RKD_EPSILON = 1e-12  # lenscloth/RKD's pdist clamps squared distances to at least this


def _squared_distances(squared_norms: jax.Array, gram: jax.Array) -> jax.Array:
    """`[i, j]`: |xi|² + |xj|² - 2 xi.xj, from the rows' squared norms `[B]` and Gram matrix `[B, B]`."""
    return squared_norms[:, None] + squared_norms[None, :] - 2 * gram


def _pairwise_distances(x: jax.Array) -> jax.Array:
    """lenscloth/RKD's `pdist`: sqrt(max(|xi|² + |xj|² - 2 xi.xj, 1e-12)), 0 on the diagonal."""
    squared = jnp.maximum(_squared_distances(jnp.sum(x * x, axis=-1), x @ x.T), RKD_EPSILON)
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, jnp.sqrt(squared))


def rkd_distance_loss(student: ArrayLike, teacher: ArrayLike, *, where: ArrayLike | None = None) -> jax.Array:
    """RKD distance (Park et al., CVPR 2019), as lenscloth/RKD and mdistiller compute it.

    Pairwise Euclidean distances of the flattened rows, each set divided by the mean of
    its positive distances, compared with smooth-L1 averaged over all B² pairs (diagonal
    included).

    Args:
      student, teacher: `[batch, ...]` (flattened per row; widths may differ).
      where: optional boolean `[batch]`: rows left out of every pair.
    """
    student, teacher, keep = _relational_pair("rkd_distance_loss", student, teacher, where)
    pairs = keep[:, None] & keep[None, :]

    def normalised(x):
        d = _pairwise_distances(x)
        positive = pairs & (d > 0)
        return d / (jnp.sum(jnp.where(positive, d, 0.0)) / jnp.maximum(jnp.sum(positive), 1))

    loss = _smooth_l1(normalised(student), normalised(teacher))
    return jnp.sum(jnp.where(pairs, loss, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)


def _difference_cosines(x: jax.Array) -> jax.Array:
    """`[i, j, k]`: normalize(x_j - x_i) · normalize(x_k - x_i) for rows x `[batch, features]`.

    Everything comes from the Gram matrix of the centred rows (centring leaves the
    differences unchanged and keeps the cancellation small): |x_j - x_i|² = G_ii + G_jj - 2 G_ij
    and (x_j - x_i)·(x_k - x_i) = G_jk - G_ij - G_ik + G_ii.
    """
    x = x - jnp.mean(x, axis=0)
    gram = x @ x.T
    squared_norms = jnp.diagonal(gram)
    same = jax.lax.stop_gradient(jnp.all(x[:, None, :] == x[None, :, :], axis=-1))  # zero difference vectors
    squared = _squared_distances(squared_norms, gram)
    scale = jnp.sqrt(jnp.maximum(squared, TORCH_NORMALIZE_EPSILON**2))  # max(|x_j - x_i|, eps), as F.normalize
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + squared_norms[:, None, None]
    zero = same[:, :, None] | same[:, None, :]
    cosines = dots / jnp.where(zero, 1.0, scale[:, :, None] * scale[:, None, :])  # no inf/NaN under `where`
    return jnp.where(zero, 0.0, jnp.clip(cosines, -1.0, 1.0))


def rkd_angle_loss(student: ArrayLike, teacher: ArrayLike, *, where: ArrayLike | None = None) -> jax.Array:
    """RKD angle (Park et al., CVPR 2019), as lenscloth/RKD and mdistiller compute it.

    For every triple (i, j, k), the cosine of the angle between the normalised difference
    vectors e_j - e_i and e_k - e_i; smooth-L1 between student and teacher averaged over
    all B³ triples. A zero difference vector (duplicate rows, or i = j) normalises to 0, as
    `F.normalize` gives it, and passes no gradient (the reference's is scaled by 1/eps = 1e12).

    The reference forms the `[B, B, features]` differences and a `B³·features` product; here
    the lengths and dot products come from the rows' Gram matrix, `B²·features + B³` work,
    and agree with the reference to float32 rounding.

    Args:
      student, teacher: `[batch, ...]` (flattened per row).
      where: optional boolean `[batch]`.
    """
    student, teacher, keep = _relational_pair("rkd_angle_loss", student, teacher, where)
    triples = keep[:, None, None] & keep[None, :, None] & keep[None, None, :]
    loss = _smooth_l1(_difference_cosines(student), _difference_cosines(teacher))
    return jnp.sum(jnp.where(triples, loss, 0.0)) / jnp.maximum(jnp.sum(triples), 1)


def pkt_loss(student: ArrayLike, teacher: ArrayLike, *, eps: float = 1e-7, where: ArrayLike | None = None
             ) -> jax.Array:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as mdistiller computes it.

    Rows are L2-normalised (x / (|x| + eps)), cosine similarities mapped to [0, 1] and
    normalised per row into conditional distributions; the loss is the mean over all B²
    entries of `p_t log((p_t + eps) / (p_s + eps))`. An all-zero row has similarity 1/2 to
    every row, with finite gradients (the reference's norm has a NaN gradient at 0).

    Args:
      student, teacher: `[batch, ...]` (flattened per row).
      where: optional boolean `[batch]`.
    """
    student, teacher, keep = _relational_pair("pkt_loss", student, teacher, where)
    pairs = keep[:, None] & keep[None, :]

    def conditional(x):
        x = x / (_safe_norm(x, keepdims=True) + eps)
        similarity = jnp.where(pairs, (x @ x.T + 1.0) / 2.0, 0.0)
        return similarity / jnp.where(keep, similarity.sum(axis=1), 1.0)[:, None]

    p_s, p_t = conditional(student), conditional(teacher)
    terms = p_t * jnp.log((p_t + eps) / (p_s + eps))
    return jnp.sum(jnp.where(pairs, terms, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)


def similarity_preserving_loss(student: ArrayLike, teacher: ArrayLike, *, where: ArrayLike | None = None
                               ) -> jax.Array:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019), as mdistiller computes it.

    The Gram matrices of the flattened rows, each row L2-normalised (`F.normalize`), and
    the sum of their squared differences divided by B². An all-zero row has a zero Gram
    row, with finite gradients.

    Args:
      student, teacher: `[batch, ...]` (flattened per row; widths may differ).
      where: optional boolean `[batch]`.
    """
    student, teacher, keep = _relational_pair("similarity_preserving_loss", student, teacher, where)
    pairs = keep[:, None] & keep[None, :]

    def gram(x):
        return _normalize(jnp.where(pairs, x @ x.T, 0.0))

    count = jnp.maximum(jnp.sum(keep), 1)
    return jnp.sum(jnp.where(pairs, (gram(teacher) - gram(student)) ** 2, 0.0)) / (count * count)
