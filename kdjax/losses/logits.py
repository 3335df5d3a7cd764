"""Logit losses: cross-entropy, KD, DKD, DIST, GKD's generalised JSD, on `[..., classes]` logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from kdjax.losses._common import (Reduction, _float32, _floating, _kl_from_logs, _logits_pair, _mask, _positive,
                                  _reduce, _safe_norm, _zero_outside)

# --- cross-entropy ------------------------------------------------------------------------------------


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *, axis: int = -1, label_smoothing: float = 0.0,
                  where: ArrayLike | None = None, reduction: Reduction = "mean") -> jax.Array:
    """Softmax cross-entropy with integer labels: `torch.nn.CrossEntropyLoss(label_smoothing=...)`.

    With smoothing ε the target is `(1 - ε) one_hot + ε / classes`, as PyTorch defines it.

    Args:
      logits: `[..., classes]`.
      labels: `[...]` integers in `[0, classes)`.
      label_smoothing: ε in [0, 1].
      where: optional boolean `[...]`.

    Returns:
      Nats: scalar mean over included positions, or `[...]` with `reduction="none"`.
    """
    (logits,) = _floating("cross_entropy", logits)
    labels = jnp.asarray(labels)
    logits = _float32(jnp.moveaxis(logits, axis, -1))
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: expected logits [..., classes] and labels [...], got {logits.shape} "
                         f"and {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    where = _mask("cross_entropy", where, labels.shape)
    logits, labels = _zero_outside(where, logits, labels)
    return _reduce("cross_entropy", cross_entropy_per_position(logits, labels, label_smoothing), where, reduction)


def soft_cross_entropy(logits: ArrayLike, target_probs: ArrayLike, *, axis: int = -1, where: ArrayLike | None = None,
                       reduction: Reduction = "mean") -> jax.Array:
    """Cross-entropy against soft targets, `-sum_c p_c log softmax(z)_c`: `CrossEntropyLoss` with probabilities.

    A class with p_c = 0 contributes 0 even where its logit is `-inf` (PyTorch's sum gives
    0 * -inf = NaN there).

    Args:
      logits: `[..., classes]`.
      target_probs: `[..., classes]`, each row a distribution (not checked).
      where: optional boolean `[...]`.
    """
    logits, targets = _logits_pair("soft_cross_entropy", logits, target_probs, axis)
    where = _mask("soft_cross_entropy", where, logits.shape[:-1])
    logits, targets = _zero_outside(where, logits, targets)
    log_probs = jax.nn.log_softmax(logits)
    present = targets > 0
    per_position = -jnp.sum(jnp.where(present, targets * jnp.where(present, log_probs, 0.0), 0.0), axis=-1)
    return _reduce("soft_cross_entropy", per_position, where, reduction)


# --- logit distillation ---------------------------------------------------------------------------------


def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 2.0, axis: int = -1,
            where: ArrayLike | None = None, reduction: Reduction = "mean") -> jax.Array:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T², summed over classes.

    The T² factor keeps the soft-target gradients on the scale of the hard-label ones. In
    log space (`kl_divergence_with_log_targets` of two `log_softmax`es), so a saturated
    teacher contributes exactly 0 where the tutorial's `p * (p.log() - q)` gives NaN. The
    tutorial's older cross-entropy form `-sum(p log q)` differs by the teacher's entropy,
    a constant for the student.

    Args:
      student_logits, teacher_logits: `[..., classes]`.
      temperature: T > 0.
      where: optional boolean `[...]`.

    Returns:
      Nats * T²: scalar mean over included positions, or `[...]` with `reduction="none"`.
    """
    _positive("kd_loss", "temperature", temperature)
    student, teacher = _logits_pair("kd_loss", student_logits, teacher_logits, axis)
    where = _mask("kd_loss", where, student.shape[:-1])
    student, teacher = _zero_outside(where, student, teacher)
    return _reduce("kd_loss", kd_per_position(student, teacher, temperature), where, reduction)


def standardize_logits(logits: ArrayLike, *, axis: int = -1, eps: float = 1e-7) -> jax.Array:
    """Logit standardisation (Sun et al., CVPR 2024): `(z - mean) / (eps + std)` along `axis`.

    `std` is PyTorch's default, unbiased (n - 1). Feed both students' and teachers' logits
    through it before `kd_loss` or `dkd_loss` (LS-KD). Float32 out.
    """
    (logits,) = _floating("standardize_logits", logits)
    logits = _float32(logits)
    if logits.shape[axis] < 2:
        raise ValueError(f"standardize_logits: need at least 2 classes along axis {axis}, got {logits.shape}")
    mean = jnp.mean(logits, axis=axis, keepdims=True)
    std = jnp.std(logits, axis=axis, keepdims=True, ddof=1)
    return (logits - mean) / (eps + std)


DKD_MASK_OFFSET = 1000.0  # mdistiller subtracts 1000 from the true class's logit to mask it out of NCKD


def dkd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, *, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0, axis: int = -1, where: ArrayLike | None = None,
             reduction: Reduction = "mean") -> jax.Array:
    """Decoupled KD (Zhao et al., CVPR 2022), as mdistiller's `dkd_loss`: (α TCKD + β NCKD) * T².

    TCKD is the KL between the binary (true class, rest) distributions; NCKD the KL between
    the distributions over the non-target classes, the true class masked by subtracting
    1000 from its logit/T (mdistiller's quirk, kept). mdistiller takes `log` of the binary
    probabilities, which is -inf (and the loss Inf) for a student certain of the true class;
    here they come from log-sum-exp, finite. The training-time warm-up factor belongs to the
    method (`kdjax.methods`), not here.

    Args:
      student_logits, teacher_logits: `[..., classes]`.
      labels: `[...]` integer true classes.
      where: optional boolean `[...]`.
    """
    _positive("dkd_loss", "temperature", temperature)
    student, teacher = _logits_pair("dkd_loss", student_logits, teacher_logits, axis)
    labels = jnp.asarray(labels)
    if labels.shape != student.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"dkd_loss: labels must be integers of shape {student.shape[:-1]}, got {labels.shape} "
                         f"{labels.dtype}")
    where = _mask("dkd_loss", where, labels.shape)
    student, teacher, labels = _zero_outside(where, student, teacher, labels)
    gt = jax.nn.one_hot(labels, student.shape[-1], dtype=bool)

    def binary_log_probs(logits):
        log_probs = jax.nn.log_softmax(logits / temperature)
        log_gt = jnp.sum(jnp.where(gt, log_probs, 0.0), axis=-1)
        log_rest = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, log_probs), axis=-1)
        return jnp.stack([log_gt, log_rest], axis=-1)

    tckd = _kl_from_logs(binary_log_probs(teacher), binary_log_probs(student))
    masked = lambda logits: jax.nn.log_softmax(logits / temperature - DKD_MASK_OFFSET * gt)  # noqa: E731
    nckd = _kl_from_logs(masked(teacher), masked(student))
    per_position = (alpha * tckd + beta * nckd) * temperature**2
    return _reduce("dkd_loss", per_position, where, reduction)


DIST_EPSILON = 1e-8  # dist_kd.py's eps, added to the product of norms in the cosine


def _pearson(a: jax.Array, b: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Pearson correlation of the rows of `a` and `b` `[rows, n]`, over the columns with weight 1."""
    if weights is None:
        a = a - a.mean(axis=-1, keepdims=True)
        b = b - b.mean(axis=-1, keepdims=True)
    else:
        count = jnp.maximum(weights.sum(), 1)
        a = (a - (a * weights).sum(-1, keepdims=True) / count) * weights
        b = (b - (b * weights).sum(-1, keepdims=True) / count) * weights
    return (a * b).sum(-1) / (_safe_norm(a) * _safe_norm(b) + DIST_EPSILON)


def dist_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0, axis: int = -1, where: ArrayLike | None = None) -> jax.Array:
    """DIST (Huang et al., NeurIPS 2022), as the official `dist_kd.py`: T² (β inter + γ intra).

    On the softmaxes at temperature T: inter-class = 1 - mean over positions of the Pearson
    correlation across classes; intra-class = 1 - mean over classes of the Pearson
    correlation across positions (batch-coupled: the included positions of all leading
    axes form the "batch"). The reference's norm has a NaN gradient at 0; this one is 0.

    Args:
      student_logits, teacher_logits: `[..., classes]`.
      where: optional boolean `[...]`.

    Returns:
      Scalar.
    """
    _positive("dist_loss", "temperature", temperature)
    student, teacher = _logits_pair("dist_loss", student_logits, teacher_logits, axis)
    where = _mask("dist_loss", where, student.shape[:-1])
    student, teacher = _zero_outside(where, student, teacher)
    classes = student.shape[-1]
    y_s = jax.nn.softmax(student.reshape(-1, classes) / temperature)
    y_t = jax.nn.softmax(teacher.reshape(-1, classes) / temperature)
    flat_where = None if where is None else where.reshape(-1)
    inter = 1.0 - _reduce("dist_loss", _pearson(y_s, y_t, None), flat_where, "mean")
    weights = None if flat_where is None else flat_where.astype(y_s.dtype)
    intra = 1.0 - jnp.mean(_pearson(y_s.T, y_t.T, weights))
    return temperature**2 * (beta * inter + gamma * intra)


def generalized_jsd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *, beta: float = 0.5,
                         temperature: float = 1.0, axis: int = -1, where: ArrayLike | None = None,
                         reduction: Reduction = "mean") -> jax.Array:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al., ICLR 2024), as TRL's `generalized_jsd_loss`.

    β = 0: forward KL(teacher || student); β = 1: reverse KL(student || teacher); otherwise
    β KL(teacher || m) + (1 - β) KL(student || m) with m = β teacher + (1 - β) student in
    probability space. On logits / T, summed over classes, no T² factor.

    A Python `beta` computes its one branch, exactly (no clipping: TRL clips nothing at 0 and 1
    either, it branches the same way). A traced `beta` computes all three and selects; the
    branches not selected then see the other distribution in place of the one that could be
    `-inf` where the other is not, so their infinities never reach the gradient, and the
    mixture's β is clipped to [1e-6, 1 - 1e-6], which only matters strictly inside (0, 1) as
    the edges select the KL branches. `-inf` logits on either side are finite wherever the
    divergence is (a class neither distribution supports contributes 0).

    Args:
      student_logits, teacher_logits: `[..., vocab]`, e.g. `[batch, time, vocab]`.
      beta: in [0, 1].
      where: optional boolean `[...]` (TRL's `labels != -100`).
    """
    _positive("generalized_jsd_loss", "temperature", temperature)
    check_beta("generalized_jsd_loss", beta)
    student, teacher = _logits_pair("generalized_jsd_loss", student_logits, teacher_logits, axis)
    where = _mask("generalized_jsd_loss", where, student.shape[:-1])
    student, teacher = _zero_outside(where, student, teacher)
    per_position = generalized_jsd_per_position(student, teacher, beta, temperature)
    return _reduce("generalized_jsd_loss", per_position, where, reduction)


# --- per-position values, shared with the top-k and fused losses ----------------------------------------
# Float32 `[..., classes]` in, `[...]` out; the public losses check, mask and reduce around them.


def cross_entropy_per_position(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    per_position = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    if label_smoothing:
        smooth = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        per_position = (1 - label_smoothing) * per_position + label_smoothing * smooth
    return per_position


def kd_per_position(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    log_t = jax.nn.log_softmax(teacher / temperature)
    return _kl_from_logs(log_t, jax.nn.log_softmax(student / temperature)) * temperature**2


def generalized_jsd_from_logs(log_s: jax.Array, log_t: jax.Array, beta) -> jax.Array:
    """GKD's divergence from the two log-distributions; one branch for a Python `beta`, all three for a traced one."""

    # A class neither side supports (both -inf: a padded vocabulary) has log m = -inf; logaddexp's gradient there is
    # NaN, and the softmax would spread it over every class, so such classes take finite stand-ins first.
    neither = (log_s == -jnp.inf) & (log_t == -jnp.inf)

    def mixture(weight):
        log_m = jnp.logaddexp(jnp.where(neither, 0.0, log_s + jnp.log1p(-weight)),
                              jnp.where(neither, 0.0, log_t + jnp.log(weight)))
        log_m = jnp.where(neither, -jnp.inf, log_m)
        return weight * _kl_from_logs(log_t, log_m) + (1 - weight) * _kl_from_logs(log_s, log_m)

    if not isinstance(beta, jax.core.Tracer):
        beta = float(beta)
        if beta == 0.0:
            return _kl_from_logs(log_t, log_s)
        if beta == 1.0:
            return _kl_from_logs(log_s, log_t)
        return mixture(beta)
    is_forward, is_reverse = beta == 0, beta == 1
    forward = _kl_from_logs(log_t, jnp.where(is_forward, log_s, log_t))
    reverse = _kl_from_logs(log_s, jnp.where(is_reverse, log_t, log_s))
    mixed = mixture(jnp.clip(beta, 1e-6, 1 - 1e-6))
    return jnp.where(is_forward, forward, jnp.where(is_reverse, reverse, mixed))


def generalized_jsd_per_position(student: jax.Array, teacher: jax.Array, beta, temperature: float) -> jax.Array:
    return generalized_jsd_from_logs(jax.nn.log_softmax(student / temperature),
                                     jax.nn.log_softmax(teacher / temperature), beta)


def check_beta(name: str, beta) -> None:
    if not isinstance(beta, jax.core.Tracer) and not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"{name}: beta must be in [0, 1], got {beta}")
