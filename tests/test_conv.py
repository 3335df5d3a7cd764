"""`kdjax.zoo.conv`'s custom gradients against XLA's own, and `Conv3x3` against `nn.Conv`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kdjax.zoo.conv import add_channel_bias, conv_general_dilated
from kdjax.zoo.initializers import torch_bias_init, torch_kernel_init
from kdjax.zoo.tutorial import Conv3x3

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, kernel, bias, padding, **kwargs):
    """Gradients w.r.t. (input, kernel, bias) of a non-linear scalar of relu(x + bias) -> conv."""

    def objective(x, kernel, bias):
        y = conv(jax.nn.relu(x + bias), kernel, (1, 1), padding, dimension_numbers=NHWC, **kwargs)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1]))

    return jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(x, kernel, bias)


@pytest.mark.parametrize("c_in,c_out", [(8, 4), (6, 6), (4, 8)])  # dy-side, dy-side, XLA's form
@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (2, 0)), ((0, 0), (1, 2))])
def test_gradients_match_xla(c_in, c_out, padding):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 9, 7, c_in))
    kernel = jax.random.normal(keys[1], (3, 3, c_in, c_out))
    bias = jax.random.normal(keys[2], (c_in,))
    want = _grads(jax.lax.conv_general_dilated, x, kernel, bias, padding)
    got = _grads(conv_general_dilated, x, kernel, bias, padding)
    for name, g, w in zip(("input", "kernel", "bias"), got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name)
    forward = conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)
    np.testing.assert_array_equal(forward, jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                                                        dimension_numbers=NHWC))


@pytest.mark.parametrize("kwargs", [{"window_strides": (2, 2)}, {"padding": "SAME"},
                                    {"rhs_dilation": (2, 2)}, {"padding": ((3, 3), (0, 0))}])
def test_other_convolutions_fall_back_to_lax(kwargs):
    x = jax.random.normal(jax.random.key(1), (2, 10, 10, 4))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 4, 2))
    args = {"window_strides": (1, 1), "padding": ((1, 1), (1, 1)), "dimension_numbers": NHWC} | kwargs

    def total(conv):
        return jax.grad(lambda k: jnp.sum(jnp.tanh(conv(x, k, **args))))(kernel)

    np.testing.assert_allclose(total(conv_general_dilated), total(jax.lax.conv_general_dilated), rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda k: conv_general_dilated(x, k, **args))(kernel))
    assert "custom_vjp" not in jaxpr


def test_channel_bias_gradient_is_the_sum_over_all_but_channels():
    dy = jax.random.normal(jax.random.key(3), (4, 5, 6, 7))
    y = jnp.zeros_like(dy)
    bias = jnp.zeros(7)
    _, vjp = jax.vjp(add_channel_bias, y, bias)
    d_y, d_bias = vjp(dy)
    np.testing.assert_array_equal(d_y, dy)
    np.testing.assert_allclose(d_bias, np.asarray(dy, np.float64).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inits", [{}, {"kernel_init": torch_kernel_init, "bias_init": torch_bias_init(27)}])
def test_conv3x3_is_nn_conv_with_the_same_params(inits):
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
    ours = Conv3x3(5, **inits)
    flax_conv = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), **inits)
    params = ours.init(jax.random.key(5), x)
    flax_params = flax_conv.init(jax.random.key(5), x)
    jax.tree.map(np.testing.assert_array_equal, params, flax_params)
    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c_in,c_out", [(8, 4), (4, 8)])
@pytest.mark.parametrize("shared", ["nothing", "kernel", "input"])
def test_vmap_over_members_matches_each_member_alone(c_in, c_out, shared):
    """The per-member batching rule (members' kernels, inputs or both stacked) against lax member by member."""
    members, padding = 3, ((1, 1), (0, 2))
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (members, 2, 6, 5, c_in))
    kernel = jax.random.normal(keys[1], (members, 3, 3, c_in, c_out))
    bias = jax.random.normal(keys[2], (members, c_in))
    x_axis, kernel_axis = (0, None) if shared == "kernel" else (None, 0) if shared == "input" else (0, 0)
    x = x[0] if x_axis is None else x
    kernel = kernel[0] if kernel_axis is None else kernel

    def batched(conv):
        return jax.vmap(lambda x_, k_, b_: _grads(conv, x_, k_, b_, padding), in_axes=(x_axis, kernel_axis, 0))

    got = batched(conv_general_dilated)(x, kernel, bias)
    for member in range(members):
        x_m = x if x_axis is None else x[member]
        kernel_m = kernel if kernel_axis is None else kernel[member]
        want = _grads(jax.lax.conv_general_dilated, x_m, kernel_m, bias[member], padding)
        for name, g, w in zip(("input", "kernel", "bias"), got, want):
            np.testing.assert_allclose(g[member], w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()),
                                       err_msg=f"{name} of member {member}")
    forward = jax.vmap(lambda x_, k_: conv_general_dilated(x_, k_, (1, 1), padding, dimension_numbers=NHWC),
                       in_axes=(x_axis, kernel_axis))(x, kernel)
    for member in range(members):
        x_m = x if x_axis is None else x[member]
        kernel_m = kernel if kernel_axis is None else kernel[member]
        np.testing.assert_allclose(
            forward[member], jax.lax.conv_general_dilated(x_m, kernel_m, (1, 1), padding, dimension_numbers=NHWC),
            rtol=1e-5, atol=1e-5)
