"""PyTorch's default initialisation for `Conv2d` and `Linear`, as Flax initialisers.

PyTorch draws weights from kaiming-uniform with a=sqrt(5), i.e. U(-b, b) with
b = gain * sqrt(3 / fan_in) and gain = sqrt(2 / (1 + a**2)), which simplifies to
b = 1 / sqrt(fan_in); biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as well.
fan_in is in_features for a dense layer and in_channels * kh * kw for a conv.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# variance_scaling(scale, "fan_in", "uniform") draws U(+-sqrt(3 * scale / fan_in));
# scale = 1/3 gives U(+-1/sqrt(fan_in)), PyTorch's kaiming_uniform_(a=sqrt(5)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias initialisation.

    Flax's bias initialisers see only the bias shape, so the layer's fan_in is bound here.
    """
    if fan_in <= 0:
        raise ValueError(f"fan_in must be positive, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init
