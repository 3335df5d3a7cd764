"""Fused linear losses: hidden states and LM heads in, a scalar out, no `[tokens, vocab]` array beyond one chunk.

A language model ends in `logits = hidden @ head`, `[tokens, d] @ [d, vocab]`. At 8,192
tokens and a 128,256-token vocabulary each float32 logits array is 4.2 GB, and a
distillation step holds several (student, teacher, their softmaxes, the gradient). Here the
tokens go through `lax.scan` in chunks: each chunk's logits, its loss and the loss's
gradient with respect to those logits are computed and at once contracted into gradients
for the student's hidden states and head. The gradient is computed in the forward pass,
under a `jax.custom_vjp` (Liger-Kernel's scheme), so the backward pass only scales it and
the matmuls are not recomputed; without differentiation the forward computes the loss alone.

Conventions:

* `hidden` is `[..., d]` (e.g. `[batch, time, d]`), `head` is `[d, vocab]` (a Flax `Dense`
  kernel; a PyTorch `Linear` weight is its transpose), `labels` and `where` are `[...]`.
* The teacher gets no gradient (its cotangents are zero, as under `stop_gradient`); the
  student's hidden states and head get theirs, in their own dtypes.
* bf16 inputs: the logits are float32 (`preferred_element_type`), the loss is computed in
  float32, the per-chunk gradient is cast to the head's dtype for the two backward matmuls
  (as Liger does), and the head's gradient is accumulated over chunks in float32.
* The value is `ce_weight * CE + distillation_weight * divergence`, each averaged over the
  included tokens (`reduction="mean"`) or summed (`"sum"`); the divergences are exactly the
  unfused `kd_loss`, `generalized_jsd_loss` and `topk_kd_loss` of the logits
  `hidden @ head`. Options (temperature, β, weights) are Python numbers.
* Vocabulary chunks are not used: a token chunk already bounds the temporaries to
  `chunk × vocab`, and the head's float32 gradient accumulator (`d × vocab`) is the larger
  term at the default chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kdjax.losses._common import _floating, _mask, _positive
from kdjax.losses.logits import (check_beta, cross_entropy_per_position, generalized_jsd_per_position,
                                 kd_per_position)
from kdjax.losses.topk import check_topk, topk_kd_per_position

FusedReduction = Literal["mean", "sum"]
# Chunk logits of at most this many elements (64 MiB in float32): 128 tokens at a 128k
# vocabulary, 512 at 32k. Each chunk holds a handful of such float32 arrays.
CHUNK_ELEMENTS = 2**24

# (student logits [chunk, vocab] float32, shared arrays, this chunk's per-token arrays) -> scalar
ChunkLoss = Callable[[jax.Array, Any, Any], jax.Array]


def default_chunk_size(tokens: int, vocab: int) -> int:
    """The largest power of two with `chunk * vocab <= CHUNK_ELEMENTS` (at least 8), capped at `tokens`."""
    chunk = 8
    while chunk * 2 * vocab <= CHUNK_ELEMENTS:
        chunk *= 2
    return max(1, min(chunk, tokens))


def _logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    return jnp.dot(hidden, head, preferred_element_type=jnp.float32)


def _chunked(array: jax.Array, chunk: int) -> jax.Array:
    """`[tokens, ...]` -> `[chunks, chunk, ...]`, zero-padded at the end."""
    pad = -array.shape[0] % chunk
    if pad:
        array = jnp.concatenate([array, jnp.zeros((pad,) + array.shape[1:], array.dtype)])
    return array.reshape((-1, chunk) + array.shape[1:])


def _scan(chunk_loss: ChunkLoss, chunk: int, hidden: jax.Array, head: jax.Array, shared: Any, per_token: Any,
          with_gradients: bool):
    tokens = hidden.shape[0]
    xs = (_chunked(hidden, chunk), jax.tree.map(lambda a: _chunked(a, chunk), per_token))
    if not with_gradients:
        def value_only(total, x):
            h, inputs = x
            return total + chunk_loss(_logits(h, head), shared, inputs), None

        total, _ = jax.lax.scan(value_only, jnp.zeros((), jnp.float32), xs)
        return total

    def with_grads(carry, x):
        total, d_head = carry
        h, inputs = x
        value, d_logits = jax.value_and_grad(chunk_loss)(_logits(h, head), shared, inputs)
        d_logits = d_logits.astype(head.dtype)
        d_hidden = jnp.dot(d_logits, head.T, preferred_element_type=jnp.float32).astype(hidden.dtype)
        d_head = d_head + jnp.dot(h.T, d_logits, preferred_element_type=jnp.float32)
        return (total + value, d_head), d_hidden

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32))
    (total, d_head), d_hidden = jax.lax.scan(with_grads, init, xs)
    return total, d_hidden.reshape((-1, hidden.shape[1]))[:tokens], d_head.astype(head.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(chunk_loss: ChunkLoss, chunk: int, hidden: jax.Array, head: jax.Array, shared: Any,
           per_token: Any) -> jax.Array:
    return _scan(chunk_loss, chunk, hidden, head, shared, per_token, with_gradients=False)


def _fused_forward(chunk_loss, chunk, hidden, head, shared, per_token):
    total, d_hidden, d_head = _scan(chunk_loss, chunk, hidden, head, shared, per_token, with_gradients=True)
    return total, (d_hidden, d_head)


def _fused_backward(chunk_loss, chunk, residuals, cotangent):
    d_hidden, d_head = residuals
    scale = lambda g: (cotangent * g).astype(g.dtype)  # noqa: E731
    return scale(d_hidden), scale(d_head), None, None


_fused.defvjp(_fused_forward, _fused_backward)


# --- the chunk losses: per-token weights already hold the mask and the mean's denominator ----------------


def _weighted(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(weights > 0, values * weights, 0.0))


def _masked_logits(logits: jax.Array, weights: jax.Array, vocab_size: int | None) -> jax.Array:
    """Zero the logits of excluded (and padding) tokens so that not even a NaN reaches the gradient; the head's
    columns past `vocab_size` (a vocabulary padded to a round size) are -inf, as the unfused losses see them."""
    logits = jnp.where((weights > 0)[:, None], logits, 0.0)
    if vocab_size is None or vocab_size == logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)


def _with_ce(divergence: Callable[..., jax.Array] | None, ce_weight: float, distillation_weight: float,
             label_smoothing: float = 0.0, vocab_size: int | None = None) -> ChunkLoss:
    def chunk_loss(student, shared, inputs):
        weights = inputs["weights"]
        student = _masked_logits(student, weights, vocab_size)
        per_token = jnp.zeros(student.shape[:1], jnp.float32)
        if ce_weight:
            per_token += ce_weight * cross_entropy_per_position(student, inputs["labels"], label_smoothing)
        if divergence is not None and distillation_weight:
            per_token += distillation_weight * divergence(student, shared, inputs, vocab_size)
        return _weighted(per_token, weights)

    return chunk_loss


def _teacher_logits(shared, inputs, vocab_size: int | None) -> jax.Array:
    return _masked_logits(_logits(inputs["teacher_hidden"], shared["teacher_head"]), inputs["weights"], vocab_size)


# --- checks ---------------------------------------------------------------------------------------------


def _static(name: str, **options: float) -> None:
    for option, value in options.items():
        if isinstance(value, jax.core.Tracer):
            raise TypeError(f"{name}: {option} must be a Python number (the fused loss is specialised on it), "
                            "got a traced value")


def _vocab_size(name: str, vocab_size: int | None, head: jax.Array) -> int | None:
    if vocab_size is not None and not (isinstance(vocab_size, int) and 1 <= vocab_size <= head.shape[1]):
        raise ValueError(f"{name}: vocab_size must be an integer in [1, {head.shape[1]}] (the head's columns), got "
                         f"{vocab_size!r}")
    return vocab_size


def _hidden_and_head(name: str, who: str, hidden: ArrayLike, head: ArrayLike) -> tuple[jax.Array, jax.Array]:
    hidden, head = _floating(name, hidden, head)
    if hidden.ndim < 1 or head.ndim != 2 or hidden.shape[-1] != head.shape[0]:
        raise ValueError(f"{name}: expected {who} hidden states [..., d] and head [d, vocab], got {hidden.shape} and "
                         f"{head.shape} (a PyTorch Linear weight is [vocab, d]: pass its transpose)")
    return hidden, head


def _weights(name: str, where: ArrayLike | None, positions: tuple[int, ...], reduction: str) -> jax.Array:
    where = _mask(name, where, positions)
    included = jnp.ones(positions, bool) if where is None else where
    if reduction == "sum":
        return included.astype(jnp.float32).reshape(-1)
    if reduction != "mean":
        raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return (included / jnp.maximum(jnp.sum(included), 1)).astype(jnp.float32).reshape(-1)


def _labels(name: str, labels: ArrayLike | None, positions: tuple[int, ...], ce_weight: float,
            weights: jax.Array) -> jax.Array | None:
    if labels is None:
        if ce_weight:
            raise ValueError(f"{name}: ce_weight = {ce_weight} needs labels [...]; pass labels= or ce_weight=0")
        return None
    labels = jnp.asarray(labels)
    if labels.shape != positions or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integers of shape {positions}, got {labels.shape} {labels.dtype}")
    return jnp.where(weights > 0, labels.reshape(-1), 0)


def _run(name: str, chunk_loss: ChunkLoss, hidden: jax.Array, head: jax.Array, shared: Any, per_token: dict,
         chunk_size: int | None) -> jax.Array:
    tokens, vocab = per_token["weights"].shape[0], head.shape[1]
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{name}: chunk_size must be a positive integer or None, got {chunk_size!r}")
    chunk = default_chunk_size(tokens, vocab) if chunk_size is None else min(chunk_size, max(tokens, 1))
    per_token = {key: value for key, value in per_token.items() if value is not None}
    if "teacher_hidden" in per_token:
        per_token["teacher_hidden"] = _zero_excluded(per_token["teacher_hidden"], per_token["weights"])
    hidden = _zero_excluded(hidden.reshape(tokens, hidden.shape[-1]), per_token["weights"])
    return _fused(chunk_loss, chunk, hidden, head, shared, per_token)


def _zero_excluded(hidden: jax.Array, weights: jax.Array) -> jax.Array:
    """Zero excluded tokens' hidden states: a NaN there would reach the head's gradient through 0 * NaN."""
    return jnp.where((weights > 0)[:, None], hidden, jnp.zeros((), hidden.dtype))


def _teacher_pair(name: str, student_hidden, student_head, teacher_hidden, teacher_head):
    student_hidden, student_head = _hidden_and_head(name, "student", student_hidden, student_head)
    teacher_hidden, teacher_head = _hidden_and_head(name, "teacher", teacher_hidden, teacher_head)
    if teacher_hidden.shape[:-1] != student_hidden.shape[:-1]:
        raise ValueError(f"{name}: student and teacher hidden states must cover the same tokens, got "
                         f"{student_hidden.shape} and {teacher_hidden.shape}")
    v_s, v_t = student_head.shape[1], teacher_head.shape[1]
    if v_t != v_s:
        hint = (f"if the teacher's extra entries are padding, pass teacher_head[:, :{v_s}]" if v_t > v_s else
                "the two models must share a tokenizer")
        raise ValueError(f"{name}: the teacher's vocabulary ({v_t}) differs from the student's ({v_s}); {hint} "
                         "(Liger pads the student's logits with zeros instead, which gives it mass on entries it "
                         "does not have)")
    return student_hidden, student_head, teacher_hidden, teacher_head


# --- the public losses ----------------------------------------------------------------------------------


def fused_cross_entropy(hidden: ArrayLike, head: ArrayLike, labels: ArrayLike, *, label_smoothing: float = 0.0,
                        where: ArrayLike | None = None, reduction: FusedReduction = "mean",
                        chunk_size: int | None = None, vocab_size: int | None = None) -> jax.Array:
    """`cross_entropy(hidden @ head, labels)` without the `[tokens, vocab]` logits.

    Args:
      hidden: `[..., d]`.
      head: `[d, vocab]`.
      labels: `[...]` integers in `[0, vocab)`.
      label_smoothing: ε in [0, 1], as `cross_entropy`.
      where: optional boolean `[...]`.
      reduction: "mean" over included tokens or "sum".
      chunk_size: tokens per chunk; default `default_chunk_size(tokens, vocab)`.
      vocab_size: the vocabulary when the head is padded past it (e.g. to a multiple of 128): the head's
        columns from `vocab_size` on hold -inf logits and get zero gradient. Default: every column.

    Returns:
      Nats, a float32 scalar.
    """
    name = "fused_cross_entropy"
    _static(name, label_smoothing=label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    hidden, head = _hidden_and_head(name, "the", hidden, head)
    positions = hidden.shape[:-1]
    weights = _weights(name, where, positions, reduction)
    per_token = {"weights": weights, "labels": _labels(name, labels, positions, 1.0, weights)}
    chunk_loss = _with_ce(None, 1.0, 0.0, float(label_smoothing), _vocab_size(name, vocab_size, head))
    return _run(name, chunk_loss, hidden, head, {}, per_token, chunk_size)


def _distillation(name: str, divergence, student_hidden, student_head, teacher_hidden, teacher_head, labels,
                  temperature, ce_weight, distillation_weight, where, reduction, chunk_size, vocab_size, **options):
    _static(name, temperature=temperature, ce_weight=ce_weight, distillation_weight=distillation_weight, **options)
    _positive(name, "temperature", temperature)
    student_hidden, student_head, teacher_hidden, teacher_head = _teacher_pair(
        name, student_hidden, student_head, teacher_hidden, teacher_head)
    positions = student_hidden.shape[:-1]
    weights = _weights(name, where, positions, reduction)
    per_token = {"weights": weights, "labels": _labels(name, labels, positions, ce_weight, weights),
                 "teacher_hidden": jax.lax.stop_gradient(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]))}
    chunk_loss = _with_ce(divergence, float(ce_weight), float(distillation_weight),
                          vocab_size=_vocab_size(name, vocab_size, student_head))
    return _run(name, chunk_loss, student_hidden, student_head,
                {"teacher_head": jax.lax.stop_gradient(teacher_head)}, per_token, chunk_size)


def fused_kd_loss(student_hidden: ArrayLike, student_head: ArrayLike, teacher_hidden: ArrayLike,
                  teacher_head: ArrayLike, *, temperature: float = 2.0, labels: ArrayLike | None = None,
                  ce_weight: float = 0.0, distillation_weight: float = 1.0, where: ArrayLike | None = None,
                  reduction: FusedReduction = "mean", chunk_size: int | None = None,
                  vocab_size: int | None = None) -> jax.Array:
    """`ce_weight * CE + distillation_weight * kd_loss` of `student_hidden @ student_head` and the teacher's.

    Args:
      student_hidden: `[..., d_s]`; student_head: `[d_s, vocab]`.
      teacher_hidden: `[..., d_t]`; teacher_head: `[d_t, vocab]` (no gradient).
      temperature: T > 0; the KD term is T² KL, as `kd_loss`.
      labels: `[...]` integers, needed when `ce_weight` is not 0.
      where: optional boolean `[...]`.
      reduction: "mean" over included tokens or "sum".
      chunk_size: tokens per chunk; default `default_chunk_size(tokens, vocab)`.
      vocab_size: the vocabulary of a padded head, as `fused_cross_entropy`.

    Returns:
      A float32 scalar.
    """
    def divergence(student, shared, inputs, vocab_size):
        return kd_per_position(student, _teacher_logits(shared, inputs, vocab_size), temperature)

    return _distillation("fused_kd_loss", divergence, student_hidden, student_head, teacher_hidden, teacher_head,
                         labels, temperature, ce_weight, distillation_weight, where, reduction, chunk_size, vocab_size)


def fused_generalized_jsd_loss(student_hidden: ArrayLike, student_head: ArrayLike, teacher_hidden: ArrayLike,
                               teacher_head: ArrayLike, *, beta: float = 0.5, temperature: float = 1.0,
                               labels: ArrayLike | None = None, ce_weight: float = 0.0,
                               distillation_weight: float = 1.0, where: ArrayLike | None = None,
                               reduction: FusedReduction = "mean", chunk_size: int | None = None,
                               vocab_size: int | None = None) -> jax.Array:
    """`ce_weight * CE + distillation_weight * generalized_jsd_loss` from hidden states and heads.

    TRL's GKD loss and Liger's `LigerFusedLinearJSDLoss` (β = 0 forward KL, β = 1 reverse KL,
    no T² factor); only the branch `beta` needs is computed. Arguments as `fused_kd_loss`.
    """
    check_beta("fused_generalized_jsd_loss", beta)

    def divergence(student, shared, inputs, vocab_size):
        return generalized_jsd_per_position(student, _teacher_logits(shared, inputs, vocab_size), beta, temperature)

    return _distillation("fused_generalized_jsd_loss", divergence, student_hidden, student_head, teacher_hidden,
                         teacher_head, labels, temperature, ce_weight, distillation_weight, where, reduction,
                         chunk_size, vocab_size, beta=beta)


def fused_topk_kd_loss(student_hidden: ArrayLike, student_head: ArrayLike, teacher_topk_logits: ArrayLike,
                       teacher_topk_indices: ArrayLike, *, temperature: float = 2.0, labels: ArrayLike | None = None,
                       ce_weight: float = 0.0, distillation_weight: float = 1.0, where: ArrayLike | None = None,
                       reduction: FusedReduction = "mean", chunk_size: int | None = None,
                       vocab_size: int | None = None) -> jax.Array:
    """`topk_kd_loss` (a cached top-k teacher) from the student's hidden states and head.

    Args:
      student_hidden: `[..., d]`; student_head: `[d, vocab]`.
      teacher_topk_logits, teacher_topk_indices: `[..., k]`, as `topk_kd_loss`.
      Others as `fused_kd_loss`.
    """
    name = "fused_topk_kd_loss"
    _static(name, temperature=temperature, ce_weight=ce_weight, distillation_weight=distillation_weight)
    _positive(name, "temperature", temperature)
    student_hidden, student_head = _hidden_and_head(name, "student", student_hidden, student_head)
    values, = _floating(name, teacher_topk_logits)
    indices = jnp.asarray(teacher_topk_indices)
    positions = student_hidden.shape[:-1]
    check_topk(name, jax.ShapeDtypeStruct(positions + (student_head.shape[1],), jnp.float32), values, indices)
    weights = _weights(name, where, positions, reduction)
    k = values.shape[-1]
    per_token = {"weights": weights, "labels": _labels(name, labels, positions, ce_weight, weights),
                 "values": jax.lax.stop_gradient(values.reshape(-1, k).astype(jnp.float32)),
                 "indices": jnp.where(weights[:, None] > 0, indices.reshape(-1, k), 0)}

    def divergence(student, shared, inputs, vocab_size):  # unused here: the student's logits arrive masked
        values = jnp.where((inputs["weights"] > 0)[:, None], inputs["values"], 0.0)
        return topk_kd_per_position(student, values, inputs["indices"], temperature)

    chunk_loss = _with_ce(divergence, float(ce_weight), float(distillation_weight),
                          vocab_size=_vocab_size(name, vocab_size, student_head))
    return _run(name, chunk_loss, student_hidden, student_head, {}, per_token, chunk_size)
