"""Distillation losses: pure functions of arrays, checked against their reference PyTorch code.

Conventions (all losses):

* Arrays first, options keyword-only. Shapes are checked at trace time; nothing broadcasts.
* **Logit losses** take `[..., classes]` (the class axis is `axis`, default -1): a
  classifier's `[batch, classes]` and a language model's `[batch, time, vocab]` alike.
  `where` is a boolean mask of the other axes (`[batch]`, `[batch, time]`); excluded
  positions contribute nothing to the value or the gradient. Softmaxes are computed in
  float32 whatever the input dtype (bfloat16 logits would otherwise lose several percent
  of KD at a 32k vocabulary); the result is float32.
* **Feature losses** (`cosine_loss`, `hint_loss`, `attention_transfer_loss`) take
  `[batch, ...]` and `where` of shape `[batch]`.
* `reduction="mean"` (default) averages over the included positions; `reduction="none"`
  returns the unreduced per-position values (`[...]`, zero at excluded positions), for
  callers who weight positions themselves (Optax's convention).
* **Batch-coupled losses** (`dist_loss`, `rkd_distance_loss`, `rkd_angle_loss`,
  `pkt_loss`, `similarity_preserving_loss`) compare examples with each other, so they have
  no per-example value and return a scalar. Rows outside `where` (`[batch]`) are left out
  of every pairwise statistic: the value is the loss of the batch without them. Under
  data parallelism kdjax's engine computes them on the global batch (mdistiller under DDP
  computes them per GPU).
* The losses are symmetric in what they differentiate: **stop the teacher's gradient
  yourself** (`jax.lax.stop_gradient(teacher_logits)`); kdjax's engine does.
* Where the reference code gives NaN or Inf (a saturated teacher, an all-zero row, a
  student certain of the true class), these give finite values and gradients; each
  docstring says where and why they differ.

References are named in each docstring; `tests/reference/reference_losses.py` restates
each reference formula in PyTorch for the parity tests.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

Reduction = Literal["mean", "none"]
# torch.nn.functional.cosine_embedding_loss adds this to each squared norm (ATen's EPSILON).
TORCH_COSINE_EPSILON = 1e-12
TORCH_NORMALIZE_EPSILON = 1e-12  # F.normalize's default eps: the norm is clamped to at least this


# --- checks and helpers -------------------------------------------------------------------------------


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
    per_position = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    if label_smoothing:
        smooth = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        per_position = (1 - label_smoothing) * per_position + label_smoothing * smooth
    return _reduce("cross_entropy", per_position, where, reduction)


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
    per_position = _kl_from_logs(jax.nn.log_softmax(teacher / temperature), jax.nn.log_softmax(student / temperature))
    return _reduce("kd_loss", per_position * temperature**2, where, reduction)


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
    if not isinstance(beta, jax.core.Tracer) and not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"generalized_jsd_loss: beta must be in [0, 1], got {beta}")
    student, teacher = _logits_pair("generalized_jsd_loss", student_logits, teacher_logits, axis)
    where = _mask("generalized_jsd_loss", where, student.shape[:-1])
    student, teacher = _zero_outside(where, student, teacher)
    log_s = jax.nn.log_softmax(student / temperature)
    log_t = jax.nn.log_softmax(teacher / temperature)

    def mixture(weight):
        log_m = jnp.logaddexp(log_s + jnp.log1p(-weight), log_t + jnp.log(weight))
        return weight * _kl_from_logs(log_t, log_m) + (1 - weight) * _kl_from_logs(log_s, log_m)

    if not isinstance(beta, jax.core.Tracer):
        beta = float(beta)
        if beta == 0.0:
            per_position = _kl_from_logs(log_t, log_s)
        elif beta == 1.0:
            per_position = _kl_from_logs(log_s, log_t)
        else:
            per_position = mixture(beta)
    else:
        is_forward, is_reverse = beta == 0, beta == 1
        forward = _kl_from_logs(log_t, jnp.where(is_forward, log_s, log_t))
        reverse = _kl_from_logs(log_s, jnp.where(is_reverse, log_t, log_s))
        mixed = mixture(jnp.clip(beta, 1e-6, 1 - 1e-6))
        per_position = jnp.where(is_forward, forward, jnp.where(is_reverse, reverse, mixed))
    return _reduce("generalized_jsd_loss", per_position, where, reduction)


# --- feature distillation -------------------------------------------------------------------------------


def _features_pair(name: str, student: ArrayLike, teacher: ArrayLike, same_shape: bool = True):
    student, teacher = _floating(name, student, teacher)
    if same_shape:
        _same_shape(name, student, teacher)
    if student.ndim < 1 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: expected [batch, ...] arrays with the same batch, got {student.shape} and "
                         f"{teacher.shape}")
    return _float32(student), _float32(teacher)


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


# --- relational (batch-coupled) distillation -----------------------------------------------------------


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
