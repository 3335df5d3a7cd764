"""The CIFAR ResNets of the distillation benchmarks (He et al. 2016; RepDistiller / mdistiller's `resnet.py`).

`resnet{8,14,20,32,44,56,110}`: 16-16-32-64 filters; `resnet8x4`, `resnet32x4`: 32-64-128-256.
Depth `6n + 2`: a 3x3 stem, three stages of `n` basic blocks (the second and third halve the
size), a global average and a linear head. Convs are kaiming-normal (fan-out), BatchNorm
starts at 1 and 0, the head keeps PyTorch's default initialisation.

Roles: `stage1`..`stage3` (each stage's output), `preact1`..`preact3` (its last block's sum
before the ReLU, mdistiller's `preact_feats`), `pooled` `[n, c]`, `feature_map` (= `stage3`).
"""

from __future__ import annotations

import functools

import jax
from flax import linen as nn

from kdjax.zoo.layers import BatchNorm, Tap, conv, global_average, residual_sum, torch_dense


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a strided 1x1 conv-BN when the shape changes).

    Returns `(relu(sum), sum)`.
    """

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        out = nn.relu(norm(name="bn1")(conv(self.planes, 3, stride=self.stride, name="conv1")(x)))
        out = norm(name="bn2")(conv(self.planes, 3, name="conv2")(out))
        return residual_sum(out, x, self.planes, self.stride, norm)


class ResNet(nn.Module):
    """`[n, 32, 32, 3]` images -> `[n, num_classes]` logits."""

    depth: int
    filters: tuple[int, int, int, int]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet of basic blocks has depth 6n + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        x = nn.relu(BatchNorm(not train, name="bn1")(conv(self.filters[0], 3, name="conv1")(x)))
        for stage in (1, 2, 3):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                x, preact = BasicBlock(self.filters[stage], stride, name=f"layer{stage}_{i}")(x, train)
            x = Tap(name=f"stage{stage}")(x)
            Tap(name=f"preact{stage}")(preact)
        pooled = Tap(name="pooled")(global_average(x))
        return torch_dense(self.num_classes, self.filters[3], name="fc")(pooled)


ROLES = {**{f"stage{i}": f"stage{i}" for i in (1, 2, 3)}, **{f"preact{i}": f"preact{i}" for i in (1, 2, 3)},
         "pooled": "pooled", "feature_map": "stage3"}
CIFAR = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)  # the "x4" networks
NETWORKS = {**{f"resnet{depth}": functools.partial(ResNet, depth, CIFAR) for depth in (8, 14, 20, 32, 44, 56, 110)},
            "resnet8x4": functools.partial(ResNet, 8, WIDE), "resnet32x4": functools.partial(ResNet, 32, WIDE)}
