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

from collections.abc import Sequence
from functools import partial

import jax
from jax import lax

Padding = Sequence[tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def _plain_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


def _kernel_grad_as_dy_conv(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                            padding: Padding) -> jax.Array:
    """`dW` `[kh, kw, c_in, c_out]` as the correlation of `dy` `[n, h', w', c_out]` with `x` `[n, h, w, c_in]`.

    In one spatial dim, `dW[a] = sum_j dy[j - a + lo] x[j]`. Padding `dy` by
    `(k - 1 - lo, k - 1 - hi)` makes that the correlation output at `k - 1 - a`.
    """
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_hw, padding)]
    flipped = lax.conv_general_dilated(dy, x, (1, 1), pads, dimension_numbers=("CHWN", "IHWO", "NHWC"))
    return flipped[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return _plain_conv(x, kernel, padding)


def _conv_fwd(x, kernel, padding):
    return _plain_conv(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _plain_conv(x_, kernel, padding), x)
    (dx,) = input_vjp(dy)
    if dy.shape[-1] <= x.shape[-1]:
        dkernel = _kernel_grad_as_dy_conv(x, dy, kernel.shape[:2], padding)
    else:
        _, kernel_vjp = jax.vjp(lambda k_: _plain_conv(x, k_, padding), kernel)
        (dkernel,) = kernel_vjp(dy)
    return dx, dkernel


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
    if fast:
        return _conv(lhs, rhs, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)


@jax.custom_vjp
def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` for channels-last `y` `[..., w, c]` and `bias` `[c]`.

    The bias gradient sums `dy` over every axis but the last. XLA:CPU emits that as a
    slow windowed reduction (38 ms for the teacher's `[128, 32, 32, 128]`); summing the
    `[-1, w * c]` view over its rows first takes 4 ms.
    """
    return y + bias


def _add_channel_bias_fwd(y, bias):
    return y + bias, None


def _add_channel_bias_bwd(_, dy):
    width, channels = dy.shape[-2:]
    dbias = dy.reshape(-1, width * channels).sum(axis=0).reshape(width, channels).sum(axis=0)
    return dy, dbias


add_channel_bias.defvjp(_add_channel_bias_fwd, _add_channel_bias_bwd)
