"""Small causal language models for next-token distillation: token ids `[batch, time]` -> logits `[batch, time, vocab]`.

`causal_conv_WxL`: an embedding, L causal 1-D convolutions of width W (kernel 4, dilations
1, 2, 4, ...: position t sees only tokens <= t) with LayerNorm, GELU and residuals, then a
LayerNorm and a linear read-out (declared as the network's `OutputHead`, so the engine
computes its losses without `[batch, time, vocab]` logits). Fast on a CPU, and enough to show distillation on
character-level text. Stateless (no BatchNorm, no dropout).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from kdjax.network import OutputHead


class CausalConvLM(nn.Module):
    vocab: int
    width: int
    layers: int
    kernel: int = 4

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.width)(tokens)
        for index in range(self.layers):
            dilation = 2**index
            padded = jnp.pad(x, ((0, 0), ((self.kernel - 1) * dilation, 0), (0, 0)))  # see only the past
            y = nn.Conv(self.width, (self.kernel,), kernel_dilation=(dilation,), padding="VALID")(padded)
            x = x + nn.gelu(nn.LayerNorm()(y))
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def output_head(model: CausalConvLM) -> OutputHead:
    """The read-out: the final LayerNorm feeds the Dense head."""
    return OutputHead(hidden=f"LayerNorm_{model.layers}", params="Dense_0")


def _causal_conv(width: int, layers: int, num_classes: int) -> nn.Module:
    return CausalConvLM(vocab=num_classes, width=width, layers=layers)


NETWORKS = {"causal_conv_128x5": functools.partial(_causal_conv, 128, 5),
            "causal_conv_32x2": functools.partial(_causal_conv, 32, 2)}
