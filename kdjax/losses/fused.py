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
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kdjax.losses._common import _floating, _mask, _positive
from kdjax.losses.logits import (check_beta, cross_entropy_per_position, generalized_jsd_per_position,
                                 kd_per_position)
from kdjax.losses.topk import TopKLogits, check_topk, topk_kd_per_position

FusedReduction = Literal["mean", "sum"]
# Chunk logits of at most this many elements (64 MiB in float32): 128 tokens at a 128k
# vocabulary, 512 at 32k. Each chunk holds a handful of such float32 arrays.
CHUNK_ELEMENTS = 2**24

# (student logits [chunk, vocab] float32, shared arrays, this chunk's per-token arrays) -> (scalar, {name: scalar})
ChunkLoss = Callable[[jax.Array, Any, Any], tuple[jax.Array, dict[str, jax.Array]]]


class LinearHead(NamedTuple):
    """A linear output head and its input: `logits = hidden @ kernel + bias`, never formed whole.

    hidden: `[..., d]`; kernel: `[d, vocab]` (a Flax `Dense` kernel; a tied embedding's table transposed);
    bias: `[vocab]` or None.
    """

    hidden: jax.Array
    kernel: jax.Array
    bias: jax.Array | None = None


def default_chunk_size(tokens: int, vocab: int) -> int:
    """The largest power of two with `chunk * vocab <= CHUNK_ELEMENTS` (at least 8), capped at `tokens`."""
    chunk = 8
    while chunk * 2 * vocab <= CHUNK_ELEMENTS:
        chunk *= 2
    return max(1, min(chunk, tokens))


def _vocab_block(head: jax.Array) -> int | None:
    """Head columns per matmul for a low-precision head on CPU (None: the whole head at once).

    XLA:CPU has no bf16 matmul: it converts both operands to float32, and a whole head's
    conversion is loop-invariant, so it is hoisted out of the chunk loop and held as a float32
    copy of the head for the whole step (1 GB at 2,048 x 128,256). Slicing the head by a
    loop index inside the chunk keeps each conversion to one block of at most
    `CHUNK_ELEMENTS` elements. Accelerators multiply bf16 directly and take the head whole.
    """
    if head.dtype == jnp.float32 or jax.default_backend() != "cpu":
        return None
    block = max(1, CHUNK_ELEMENTS // head.shape[0])
    return block if block < head.shape[1] else None


def _logits(hidden: jax.Array, head: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """`hidden @ head (+ bias)` in float32, `[n, d] @ [d, vocab] -> [n, vocab]`."""
    block = _vocab_block(head)
    if block is None:
        logits = jnp.dot(hidden, head, preferred_element_type=jnp.float32)
    else:
        count = head.shape[1] // block

        def piece(index):
            columns = _block(head, index, block)
            return jnp.dot(hidden, columns, preferred_element_type=jnp.float32)

        pieces = jax.lax.map(piece, jnp.arange(count))  # [count, n, block]
        logits = jnp.moveaxis(pieces, 0, 1).reshape(hidden.shape[0], count * block)
        if count * block < head.shape[1]:
            rest = jnp.dot(hidden, head[:, count * block:], preferred_element_type=jnp.float32)
            logits = jnp.concatenate([logits, rest], axis=1)
    return logits if bias is None else logits + bias.astype(jnp.float32)


def _times_head_transposed(d_logits: jax.Array, head: jax.Array) -> jax.Array:
    """`d_logits @ head.T` in float32, `[n, vocab] @ [vocab, d] -> [n, d]`, by blocks as `_logits`."""
    block = _vocab_block(head)
    if block is None:
        return jnp.dot(d_logits, head.T, preferred_element_type=jnp.float32)
    count = head.shape[1] // block

    def add_block(total, index):
        columns = _block(head, index, block)
        rows = jax.lax.dynamic_slice_in_dim(d_logits, index * block, block, axis=1)
        return total + jnp.dot(rows, columns.T, preferred_element_type=jnp.float32), None

    total, _ = jax.lax.scan(add_block, jnp.zeros((d_logits.shape[0], head.shape[0]), jnp.float32),
                            jnp.arange(count))
    if count * block < head.shape[1]:
        total += jnp.dot(d_logits[:, count * block:], head[:, count * block:].T, preferred_element_type=jnp.float32)
    return total


def _block(head: jax.Array, index: jax.Array, block: int) -> jax.Array:
    """Columns `[index * block, (index + 1) * block)` of `head`, sliced as raw bits: on a plain slice XLA moves the
    float32 conversion ahead of the slice, onto the whole head, and out of the loop."""
    bits = jax.lax.bitcast_convert_type(head, jnp.uint16 if head.dtype.itemsize == 2 else jnp.uint32)
    columns = jax.lax.dynamic_slice_in_dim(bits, index * block, block, axis=1)
    return jax.lax.bitcast_convert_type(columns, head.dtype)


def _chunked(array: jax.Array, chunk: int) -> jax.Array:
    """`[tokens, ...]` -> `[chunks, chunk, ...]`, zero-padded at the end."""
    pad = -array.shape[0] % chunk
    if pad:
        array = jnp.concatenate([array, jnp.zeros((pad,) + array.shape[1:], array.dtype)])
    return array.reshape((-1, chunk) + array.shape[1:])


def _scan(chunk_loss: ChunkLoss, chunk: int, hidden: jax.Array, head: jax.Array, bias: jax.Array | None,
          shared: Any, per_token: Any, with_gradients: bool):
    tokens = hidden.shape[0]
    xs = (_chunked(hidden, chunk), jax.tree.map(lambda a: _chunked(a, chunk), per_token))
    metric_shapes = jax.eval_shape(lambda h, x: chunk_loss(_logits(h, head, bias), shared, x)[1],
                                   *jax.tree.map(lambda a: a[0], xs))
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
    if not with_gradients:
        def value_only(carry, x):
            total, metrics = carry
            h, inputs = x
            value, chunk_metrics = chunk_loss(_logits(h, head, bias), shared, inputs)
            return (total + value, jax.tree.map(jnp.add, metrics, chunk_metrics)), None

        (total, metrics), _ = jax.lax.scan(value_only, (jnp.zeros((), jnp.float32), zero_metrics), xs)
        return total, metrics

    def with_grads(carry, x):
        total, metrics, d_head, d_bias = carry
        h, inputs = x
        (value, chunk_metrics), d_logits = jax.value_and_grad(chunk_loss, has_aux=True)(
            _logits(h, head, bias), shared, inputs)
        if d_bias is not None:
            d_bias = d_bias + jnp.sum(d_logits, axis=0)
        d_logits = d_logits.astype(head.dtype)
        d_hidden = _times_head_transposed(d_logits, head).astype(hidden.dtype)
        d_head = d_head + jnp.dot(h.T, d_logits, preferred_element_type=jnp.float32)
        return (total + value, jax.tree.map(jnp.add, metrics, chunk_metrics), d_head, d_bias), d_hidden

    init = (jnp.zeros((), jnp.float32), zero_metrics, jnp.zeros(head.shape, jnp.float32),
            None if bias is None else jnp.zeros(bias.shape, jnp.float32))
    (total, metrics, d_head, d_bias), d_hidden = jax.lax.scan(with_grads, init, xs)
    d_bias = None if bias is None else d_bias.astype(bias.dtype)
    return (total, metrics), (d_hidden.reshape((-1, hidden.shape[1]))[:tokens], d_head.astype(head.dtype), d_bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(chunk_loss: ChunkLoss, chunk: int, hidden: jax.Array, head: jax.Array, bias: jax.Array | None,
           shared: Any, per_token: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    return _scan(chunk_loss, chunk, hidden, head, bias, shared, per_token, with_gradients=False)


def _fused_forward(chunk_loss, chunk, hidden, head, bias, shared, per_token):
    return _scan(chunk_loss, chunk, hidden, head, bias, shared, per_token, with_gradients=True)


def _fused_backward(chunk_loss, chunk, residuals, cotangents):
    cotangent, _ = cotangents  # the metrics carry no gradient
    scale = lambda g: None if g is None else (cotangent * g).astype(g.dtype)  # noqa: E731
    return (*map(scale, residuals), None, None)


_fused.defvjp(_fused_forward, _fused_backward)


# --- the chunk losses: per-token weights already hold the mask and the mean's denominator ----------------


def _weighted(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(weights > 0, values * weights, 0.0))


def _masked_logits(logits: jax.Array, included: jax.Array, vocab_size: int | None) -> jax.Array:
    """Zero the logits of excluded (and padding) tokens so that not even a NaN reaches the gradient; the head's
    columns past `vocab_size` (a vocabulary padded to a round size) are -inf, as the unfused losses see them."""
    logits = jnp.where(included[:, None], logits, 0.0)
    if vocab_size is None or vocab_size == logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)


def _objective(divergence: Callable[..., jax.Array] | None, label_smoothing: float = 0.0,
               vocab_size: int | None = None) -> ChunkLoss:
    """`ce_weight * sum(ce_weights * CE) + aux_weight * sum(aux_weights * divergence)` over a chunk, the weights
    read from `shared`; metrics `ce` and `aux` (the two weighted sums) and `correct` (top-1 hits among `counted`)."""
    def chunk_loss(student, shared, inputs):
        student = _masked_logits(student, inputs["included"], vocab_size)
        metrics = {"ce": jnp.zeros((), jnp.float32), "aux": jnp.zeros((), jnp.float32)}
        if "labels" in inputs:
            ce = cross_entropy_per_position(student, inputs["labels"], label_smoothing)
            metrics["ce"] = _weighted(ce, inputs["ce_weights"])
            hits = (jnp.argmax(student, axis=-1) == inputs["labels"]) & inputs["counted"]
            metrics["correct"] = jnp.sum(hits).astype(jnp.float32)
        if divergence is not None:
            metrics["aux"] = _weighted(divergence(student, shared, inputs, vocab_size), inputs["aux_weights"])
        value = shared["ce_weight"] * metrics["ce"] + shared["aux_weight"] * metrics["aux"]
        return value, jax.lax.stop_gradient(metrics)

    return chunk_loss


def _teacher_logits(shared, inputs, vocab_size: int | None) -> jax.Array:
    """The teacher's logits for this chunk: from its hidden states and head, or as given."""
    if "teacher_logits" in inputs:
        logits = inputs["teacher_logits"].astype(jnp.float32)
    else:
        logits = _logits(inputs["teacher_hidden"], shared["teacher_head"], shared.get("teacher_bias"))
    return _masked_logits(logits, inputs["included"], vocab_size)


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


def _run(name: str, chunk_loss: ChunkLoss, hidden: jax.Array, head: jax.Array, bias: jax.Array | None, shared: Any,
         per_token: dict, chunk_size: int | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    tokens, vocab = per_token["included"].shape[0], head.shape[1]
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{name}: chunk_size must be a positive integer or None, got {chunk_size!r}")
    chunk = default_chunk_size(tokens, vocab) if chunk_size is None else min(chunk_size, max(tokens, 1))
    per_token = {key: value for key, value in per_token.items() if value is not None}
    for key in ("teacher_hidden", "teacher_logits"):
        if key in per_token:
            per_token[key] = _zero_excluded(per_token[key], per_token["included"])
    hidden = _zero_excluded(hidden.reshape(tokens, hidden.shape[-1]), per_token["included"])
    return _fused(chunk_loss, chunk, hidden, head, bias, shared, per_token)


def _zero_excluded(hidden: jax.Array, included: jax.Array) -> jax.Array:
    """Zero excluded tokens' rows: a NaN there would reach the head's gradient through 0 * NaN."""
    return jnp.where(included[:, None], hidden, jnp.zeros((), hidden.dtype))


def _uniform(weights: jax.Array, ce_weight: float, distillation_weight: float) -> tuple[dict, dict]:
    """(per-token arrays, shared weights) of a public loss, whose two terms share one mask and reduction."""
    included = weights > 0
    per_token = {"included": included, "counted": included, "ce_weights": weights, "aux_weights": weights}
    return per_token, {"ce_weight": jnp.float32(ce_weight), "aux_weight": jnp.float32(distillation_weight)}


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
    per_token, shared = _uniform(weights, 1.0, 0.0)
    per_token["labels"] = _labels(name, labels, positions, 1.0, weights)
    chunk_loss = _objective(None, float(label_smoothing), _vocab_size(name, vocab_size, head))
    return _run(name, chunk_loss, hidden, head, None, shared, per_token, chunk_size)[0]


def _distillation(name: str, divergence, student_hidden, student_head, teacher_hidden, teacher_head, labels,
                  temperature, ce_weight, distillation_weight, where, reduction, chunk_size, vocab_size, **options):
    _static(name, temperature=temperature, ce_weight=ce_weight, distillation_weight=distillation_weight, **options)
    _positive(name, "temperature", temperature)
    student_hidden, student_head, teacher_hidden, teacher_head = _teacher_pair(
        name, student_hidden, student_head, teacher_hidden, teacher_head)
    positions = student_hidden.shape[:-1]
    weights = _weights(name, where, positions, reduction)
    per_token, shared = _uniform(weights, ce_weight, distillation_weight)
    per_token["labels"] = _labels(name, labels, positions, ce_weight, weights) if ce_weight else None
    per_token["teacher_hidden"] = jax.lax.stop_gradient(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]))
    shared["teacher_head"] = jax.lax.stop_gradient(teacher_head)
    chunk_loss = _objective(divergence if distillation_weight else None,
                            vocab_size=_vocab_size(name, vocab_size, student_head))
    return _run(name, chunk_loss, student_hidden, student_head, None, shared, per_token, chunk_size)[0]


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
    per_token, shared = _uniform(weights, ce_weight, distillation_weight)
    per_token |= {"labels": _labels(name, labels, positions, ce_weight, weights) if ce_weight else None,
                  "values": jax.lax.stop_gradient(values.reshape(-1, k).astype(jnp.float32)),
                  "indices": jnp.where(weights[:, None] > 0, indices.reshape(-1, k), 0)}

    def divergence(student, shared, inputs, vocab_size):  # vocab_size unused: the student's logits arrive masked
        values = jnp.where(inputs["included"][:, None], inputs["values"], 0.0)
        return topk_kd_per_position(student, values, inputs["indices"], temperature)

    chunk_loss = _objective(divergence if distillation_weight else None,
                            vocab_size=_vocab_size(name, vocab_size, student_head))
    return _run(name, chunk_loss, student_hidden, student_head, None, shared, per_token, chunk_size)[0]


# --- the engine's form: any per-position divergence, traced hyperparameters, a term per mask ------------------

# (student logits [n, vocab], teacher logits [n, vocab], hyperparameters) -> [n], both float32
PerPositionDivergence = Callable[[jax.Array, jax.Array, Any], jax.Array]


def fused_objective(student: LinearHead, labels: ArrayLike, *,
                    teacher: LinearHead | TopKLogits | ArrayLike | None = None,
                    divergence: PerPositionDivergence | None = None, hyperparameters: Any,
                    ce_where: ArrayLike | None = None, aux_where: ArrayLike | None = None,
                    counted: ArrayLike | None = None, vocab_size: int | None = None,
                    reduction: FusedReduction = "mean", chunk_size: int | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`ce_weight * CE + aux_weight * divergence`, each the mean over its own mask, from the student's head.

    What a distillation step computes, chunk by chunk: the student's logits (and the teacher's,
    from its head) exist one chunk at a time. Unlike the public losses, the hyperparameters may
    be traced arrays, so one compiled step serves a grid of them.

    Args:
      student: the student's `LinearHead`, hidden `[..., d_s]`.
      labels: `[...]` integers, the next tokens (or classes).
      teacher: the teacher's `LinearHead` (hidden `[..., d_t]`), its logits `[..., vocab]`, its top-k
        (`TopKLogits`, `[..., k]`), or None without a divergence; no gradient reaches it.
      divergence: `(student logits, teacher logits (or its `TopKLogits`), hyperparameters) -> [n]` per
        position, as `kdjax.losses.logits.kd_per_position`.
      hyperparameters: a mapping holding `ce_weight` and `aux_weight` (scalars) and whatever `divergence` reads.
      ce_where, aux_where: boolean `[...]`, the positions each term averages over (None: all).
      counted: boolean `[...]`, the positions whose top-1 hits count (default `aux_where`).
      vocab_size: the vocabulary of a padded head (see `fused_cross_entropy`).
      reduction: "mean" (each term over its mask) or "sum".

    Returns:
      (loss, metrics): a float32 scalar, and `{"ce": CE, "aux": the divergence (0 without one),
      "correct": top-1 hits among counted}`, float32 scalars without gradient, reduced as the loss.
    """
    name = "fused_objective"
    hidden, kernel = _hidden_and_head(name, "student", student.hidden, student.kernel)
    bias = _bias(name, student.bias, kernel)
    positions = hidden.shape[:-1]
    def mask_or(where, default):
        where = _mask(name, where, positions)
        return default if where is None else where

    everything = jnp.ones(positions, bool)
    ce_mask, aux_mask = mask_or(ce_where, everything), mask_or(aux_where, everything)
    counted_mask = mask_or(counted, aux_mask)
    ce_weights = _weights(name, ce_mask, positions, reduction)
    aux_weights = _weights(name, aux_mask, positions, reduction) if divergence is not None else None
    per_token = {"included": (ce_mask | aux_mask).reshape(-1) if divergence is not None else ce_mask.reshape(-1),
                 "counted": counted_mask.reshape(-1), "ce_weights": ce_weights, "aux_weights": aux_weights,
                 "labels": _labels(name, labels, positions, 1.0, ce_weights)}
    shared = {"ce_weight": jnp.asarray(hyperparameters["ce_weight"], jnp.float32),
              "aux_weight": jnp.asarray(hyperparameters.get("aux_weight", 0.0), jnp.float32),
              "hp": dict(hyperparameters)}
    if divergence is not None:
        if teacher is None:
            raise ValueError(f"{name}: a divergence needs the teacher's head or logits")
        if isinstance(teacher, TopKLogits):
            k = teacher.values.shape[-1]
            check_topk(name, jax.ShapeDtypeStruct(positions + (kernel.shape[1],), jnp.float32), teacher.values,
                       teacher.indices)
            per_token["teacher_topk_values"] = jax.lax.stop_gradient(teacher.values.reshape(-1, k))
            per_token["teacher_topk_indices"] = teacher.indices.reshape(-1, k)
        elif isinstance(teacher, LinearHead):
            _, _, t_hidden, t_kernel = _teacher_pair(name, hidden, kernel, teacher.hidden, teacher.kernel)
            per_token["teacher_hidden"] = jax.lax.stop_gradient(t_hidden.reshape(-1, t_hidden.shape[-1]))
            shared["teacher_head"] = jax.lax.stop_gradient(t_kernel)
            if teacher.bias is not None:
                shared["teacher_bias"] = jax.lax.stop_gradient(_bias(name, teacher.bias, t_kernel))
        else:
            logits, = _floating(name, teacher)
            if logits.shape != positions + (kernel.shape[1],):
                raise ValueError(f"{name}: the teacher's logits must be {positions + (kernel.shape[1],)} (the "
                                 f"student's positions and vocabulary), got {logits.shape}")
            per_token["teacher_logits"] = jax.lax.stop_gradient(logits.reshape(-1, logits.shape[-1]))

        def chunk_divergence(student_logits, shared, inputs, vocab_size):
            if "teacher_topk_values" in inputs:  # excluded tokens read index 0 with value 0: finite, weighted out
                included = inputs["included"][:, None]
                values = jnp.where(included, inputs["teacher_topk_values"].astype(jnp.float32), 0.0)
                teacher_side = TopKLogits(values, jnp.where(included, inputs["teacher_topk_indices"], 0))
            else:
                teacher_side = _teacher_logits(shared, inputs, vocab_size)
            return divergence(student_logits, teacher_side, shared["hp"])
    else:
        chunk_divergence = None
    chunk_loss = _objective(chunk_divergence, vocab_size=_vocab_size(name, vocab_size, kernel))
    loss, sums = _run(name, chunk_loss, hidden, kernel, bias, shared, per_token, chunk_size)
    return loss, {"ce": sums["ce"], "aux": sums["aux"], "correct": sums["correct"]}


def _bias(name: str, bias: ArrayLike | None, kernel: jax.Array) -> jax.Array | None:
    if bias is None:
        return None
    bias, = _floating(name, bias)
    if bias.shape != kernel.shape[1:]:
        raise ValueError(f"{name}: the head's bias must be [vocab] = {kernel.shape[1:]}, got {bias.shape}")
    return bias
