"""`conv_general_dilated` with a weight gradient that avoids XLA:CPU's slow transposes.

The gradient XLA derives for a convolution's kernel, `dW[a, b, i, o] = sum_{n,h,w}
x_pad[n, h+a, w+b, i] * dy[n, h, w, o]`, is itself a convolution that treats `x`'s
channels as its batch and `x`'s batch as its features. XLA:CPU gets there by transposing
the whole of `x` (`[n, h, w, c] -> [c, h, w, n]`), and when `x` comes from a bias-add and
ReLU it fuses them into that transpose, which then runs several times slower than the
transpose alone: 269 ms of the teacher's 780 ms step, against 44 ms for the bare transpose
(experiments/PERFORMANCE.md).

The same sum is also a convolution of `dy` (batch: its channels, features: its batch) with
`x` as the kernel (input features: its batch, output features: its channels). That form
transposes `dy` fully and `x` only partly (`n` moves inward, channels stay minor), so it
wins when `dy` has no more channels than `x` (measured: `python -m kdjax.bench.profile`).
`conv_general_dilated` picks the form that way; the forward pass and the input gradient
are XLA's own.

Both forms compute the same sum in a different order: they agree to float32 rounding
(the parity tests against PyTorch hold to 1e-6 absolute either way).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

Padding = Sequence[tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")
ROW_SUM_MIN_CHANNELS = 64  # narrower layers keep XLA's own bias gradient (see add_channel_bias)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def _plain_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


def _input_grad(kernel: jax.Array, dy: jax.Array, padding: Padding, x_shape: tuple[int, ...]) -> jax.Array:
    x_shape = (dy.shape[0], *x_shape[1:])  # the batch may hold several members' examples (folded)
    transpose = jax.linear_transpose(lambda x_: _plain_conv(x_, kernel, padding),
                                     jax.ShapeDtypeStruct(x_shape, dy.dtype))
    return transpose(dy)[0]


def _kernel_grad(x: jax.Array, dy: jax.Array, padding: Padding, kernel_hw: tuple[int, int]) -> jax.Array:
    if dy.shape[-1] <= x.shape[-1]:
        return _kernel_grad_as_dy_conv(x, dy, kernel_hw, padding)
    kernel = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1], dy.shape[-1]), dy.dtype)
    return jax.linear_transpose(lambda k_: _plain_conv(x, k_, padding), kernel)(dy)[0]


def _kernel_grad_as_dy_conv(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                            padding: Padding) -> jax.Array:
    """`dW` `[kh, kw, c_in, c_out]` as the correlation of `dy` `[n, h', w', c_out]` with `x` `[n, h, w, c_in]`.

    In one spatial dim, `dW[a] = sum_j dy[j - a + lo] x[j]`. Padding `dy` by
    `(k - 1 - lo, k - 1 - hi)` makes that the correlation output at `k - 1 - a`.
    """
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_hw, padding)]
    flipped = lax.conv_general_dilated(dy, x, (1, 1), pads, dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return flipped[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


def _batched_per_member(fn, image_args: tuple[int, ...]):
    """`fn(*arrays)` with a batching rule for stacks of independent models (`jax.vmap` over members).

    XLA batches a convolution whose kernel differs per member into one grouped
    convolution, which XLA:CPU runs 2-3x slower per member than the plain one. On CPU
    this rule instead emits each member's convolution on its own (unrolled: inside a
    `lax.map` loop XLA:CPU runs them >10x slower still); when
    only the image-like arguments (`image_args`, batch-major) are batched, it folds the
    member axis into their batch axis: one convolution, no grouping. Other backends keep
    XLA's grouped form.
    """
    wrapped = jax.custom_batching.custom_vmap(fn)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        if not any(batched for i, batched in enumerate(in_batched) if i not in image_args):
            folded = [a.reshape(-1, *a.shape[2:]) if batched else a for a, batched in zip(args, in_batched)]
            out = fn(*folded)
            return out.reshape(axis_size, -1, *out.shape[1:]), True
        stacked = [a if batched else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, batched in zip(args, in_batched)]
        def one_by_one(*stacked):
            return jnp.stack([fn(*(a[member] for a in stacked)) for member in range(axis_size)])

        looped = lax.platform_dependent(*stacked, cpu=one_by_one, default=jax.vmap(fn))
        return looped, True

    return wrapped


@functools.lru_cache
def _ops(padding: Padding, x_shape: tuple[int, ...], kernel_hw: tuple[int, int]):
    """Forward, input-gradient and kernel-gradient convolutions for one geometry, each batchable per member."""
    forward = _batched_per_member(lambda x, kernel: _plain_conv(x, kernel, padding), image_args=(0,))
    input_grad = _batched_per_member(lambda kernel, dy: _input_grad(kernel, dy, padding, x_shape), image_args=(1,))
    kernel_grad = _batched_per_member(lambda x, dy: _kernel_grad(x, dy, padding, kernel_hw), image_args=())
    return forward, input_grad, kernel_grad


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    forward, _, _ = _ops(padding, x.shape, kernel.shape[:2])
    return forward(x, kernel)


def _conv_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, residuals, dy):
    x, kernel = residuals
    _, input_grad, kernel_grad = _ops(padding, x.shape, kernel.shape[:2])
    return input_grad(kernel, dy), kernel_grad(x, dy)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _static_padding(padding, kernel_hw) -> tuple[tuple[int, int], ...] | None:
    if isinstance(padding, str):
        return None
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2 or any(not 0 <= p <= k - 1 for k, pair in zip(kernel_hw, pads) for p in pair):
        return None
    return pads


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (and `nn.Conv(conv_general_dilated=...)`).

    Takes the fast path for 2-D NHWC/HWIO convolutions with stride 1, no dilation or
    grouping, default precision and explicit padding of at most `k - 1` per side; anything
    else goes straight to `lax.conv_general_dilated`.
    """
    ones = (1, 1)
    pads = _static_padding(padding, rhs.shape[:2]) if rhs.ndim == 4 else None
    fast = (lhs.ndim == 4 and pads is not None and _is_nhwc(dimension_numbers)
            and tuple(window_strides) == ones and tuple(lhs_dilation or ones) == ones
            and tuple(rhs_dilation or ones) == ones and feature_group_count == 1
            and batch_group_count == 1 and precision is None and preferred_element_type is None)
    if fast:  # the custom gradient is a CPU speed-up: GPU and TPU keep XLA's own
        return lax.platform_dependent(lhs, rhs, cpu=lambda x, k: _conv(x, k, pads),
                                      default=lambda x, k: _plain_conv(x, k, pads))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)


def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` for channels-last `y` `[..., w, c]` and `bias` `[c]`.

    The bias gradient sums `dy` over every axis but the last. For wide layers XLA:CPU emits
    that as a slow windowed reduction (38 ms for the teacher's `[128, 32, 32, 128]` on an
    AVX-512 host); on CPU, summing the `[-1, w * c]` view over its rows first took 4 ms.
    Below `ROW_SUM_MIN_CHANNELS` channels the plain sum is the faster one: the view splits
    the fusion that computes `dy`, which cost the student's step 8 ms of its 36
    (experiments/PERFORMANCE.md). Other backends use `y + bias`.
    """
    if y.shape[-1] < ROW_SUM_MIN_CHANNELS:
        return y + bias
    return lax.platform_dependent(y, bias, cpu=_cpu_add_channel_bias, default=jnp.add)


@jax.custom_vjp
def _cpu_add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias


def _add_channel_bias_fwd(y, bias):
    return y + bias, None


def _add_channel_bias_bwd(_, dy):
    width, channels = dy.shape[-2:]
    dbias = dy.reshape(-1, width * channels).sum(axis=0).reshape(width, channels).sum(axis=0)
    return dy, dbias


_cpu_add_channel_bias.defvjp(_add_channel_bias_fwd, _add_channel_bias_bwd)
