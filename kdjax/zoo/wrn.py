"""Wide ResNets (Zagoruyko & Komodakis 2016) as the distillation benchmarks define them (mdistiller's `wrn.py`).

`wrn_{depth}_{width}`: depth `6n + 4`, a 3x3 stem of 16 filters, three groups of `n`
pre-activation blocks of 16k, 32k and 64k filters (k the width), BN-ReLU, a global average
and a linear head. Convs are normal with std `sqrt(2 / (k * k * out_channels))`, BatchNorm
starts at 1 and 0, the head's bias at 0 (its weight keeps PyTorch's default).

Roles: `stage1`..`stage3` (each group's output), `preact1`..`preact3` (the next block's
first BatchNorm of that output, and the final BatchNorm for the last: mdistiller's
`preact_feats`), `pooled`, `feature_map` (= `stage3`).
"""

from __future__ import annotations

import functools

import jax
from flax import linen as nn

from kdjax.zoo.initializers import torch_kernel_init
from kdjax.zoo.layers import BatchNorm, Tap, conv, global_average


class BasicBlock(nn.Module):
    """BN-ReLU-conv, BN-ReLU-conv; the shortcut is a 1x1 conv of the activated input when the width changes."""

    planes: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        activated = nn.relu(norm(name="bn1")(x))
        out = nn.relu(norm(name="bn2")(conv(self.planes, 3, stride=self.stride, name="conv1")(activated)))
        out = conv(self.planes, 3, name="conv2")(out)
        if x.shape[-1] == self.planes:
            return x + out
        return conv(self.planes, 1, stride=self.stride, name="convShortcut")(activated) + out


class NetworkBlock(nn.Module):
    """`blocks` basic blocks; the first changes the width and applies the stride."""

    blocks: int
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.blocks):
            x = BasicBlock(self.planes, self.stride if i == 0 else 1, name=f"layer_{i}")(x, train)
        return x


class WideResNet(nn.Module):
    """`[n, 32, 32, 3]` images -> `[n, num_classes]` logits."""

    depth: int
    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"a wide ResNet has depth 6n + 4, got {self.depth}")
        blocks = (self.depth - 4) // 6
        x = conv(16, 3, name="conv1")(x)
        for group, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            x = NetworkBlock(blocks, planes * self.width, stride, name=f"block{group}")(x, train)
        x = nn.relu(BatchNorm(not train, name="bn1")(x))
        pooled = Tap(name="pooled")(global_average(x))
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init, bias_init=nn.initializers.zeros_init(),
                        name="fc")(pooled)


ROLES = {"stage1": "block1", "stage2": "block2", "stage3": "block3", "preact1": "block2/layer_0/bn1",
         "preact2": "block3/layer_0/bn1", "preact3": "bn1", "pooled": "pooled", "feature_map": "block3"}
NETWORKS = {f"wrn_{depth}_{width}": functools.partial(WideResNet, depth, width)
            for depth, width in ((16, 1), (16, 2), (40, 1), (40, 2))}
