"""What the zoo's networks are built from, with PyTorch's semantics, parameter layout and initialisation.

Module names follow the PyTorch attribute paths with each index joined to its parent
(`layer1.0.conv1` is `layer1_0/conv1`), so `kdjax.convert` maps a `state_dict` by name alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from kdjax.zoo.conv import conv_general_dilated
from kdjax.zoo.initializers import torch_bias_init, torch_kernel_init

# kaiming_normal_(mode="fan_out", nonlinearity="relu"), and the `normal_(0, sqrt(2 / (k * k * out_channels)))`
# that the WRN, VGG and MobileNetV2 definitions write by hand: the same distribution.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's momentum 0.1 in Flax's convention: running = momentum * running + (1 - momentum) * batch.
TORCH_MOMENTUM = 0.9
TORCH_EPSILON = 1e-5


def conv(features: int, kernel_size: int, *, name: str, stride: int = 1, groups: int = 1, bias: bool = False,
         kernel_init: nn.initializers.Initializer = kaiming_fan_out) -> nn.Conv:
    """`nn.Conv2d(in, features, kernel_size, stride, padding=kernel_size // 2, groups, bias)` on NHWC."""
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
                   bias_init=nn.initializers.zeros_init(), conv_general_dilated=conv_general_dilated, name=name)


def torch_dense(features: int, in_features: int, *, name: str) -> nn.Dense:
    """`nn.Linear(in_features, features)` with PyTorch's default initialisation."""
    return nn.Dense(features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(in_features), name=name)


class BatchNorm(nn.Module):
    """`nn.BatchNorm2d` over the last axis: params `scale`, `bias`; `batch_stats` `mean`, `var`.

    Training normalises by the batch's mean and biased variance and updates the running
    variance with the unbiased one, as PyTorch does (Flax's `nn.BatchNorm` uses the biased
    variance for both). Under `jit` with the batch sharded over devices the statistics are
    those of the global batch, as `SyncBatchNorm` computes them.
    """

    use_running_average: bool
    momentum: float = TORCH_MOMENTUM
    epsilon: float = TORCH_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (channels,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            # One pass over `[rows, channels]`, as Flax's `use_fast_variance`: E[x^2] - E[x]^2, clamped at 0. On
            # XLA:CPU it made resnet20's step 22 % faster than the two-pass form over the NHWC axes.
            rows = x.reshape(-1, channels)
            mean = rows.mean(axis=0)
            var = jnp.maximum(jnp.square(rows).mean(axis=0) - jnp.square(mean), 0.0)
            if not self.is_initializing():
                count = rows.shape[0]
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * var * count / max(count - 1, 1))
        gain = scale * jax.lax.rsqrt(var + self.epsilon)
        return x * gain + (bias - mean * gain)


class Tap(nn.Module):
    """The identity, named: a role points at it to read a value that no other submodule returns."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def residual_sum(out: jax.Array, x: jax.Array, width: int, stride: int, norm) -> tuple[jax.Array, jax.Array]:
    """`(relu(out + shortcut), out + shortcut)`: the shortcut is `x`, or a strided 1x1 conv-BN (`downsample_0`,
    `downsample_1`) where the shape changes. Called inside a block's compact `__call__`, whose modules these are."""
    if stride != 1 or x.shape[-1] != width:
        x = norm(name="downsample_1")(conv(width, 1, stride=stride, name="downsample_0")(x))
    preact = out + x
    return nn.relu(preact), preact


def global_average(x: jax.Array) -> jax.Array:
    """`[n, h, w, c] -> [n, c]`: the references' final average pool, which covers the whole map at 32x32."""
    return x.mean(axis=(1, 2))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's shuffle on NHWC: channel `g * (c / groups) + i` moves to `i * groups + g`."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)
