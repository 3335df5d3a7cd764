"""MobileNetV2 (Sandler et al. 2018) as the distillation benchmarks adapt it to CIFAR (mdistiller's `mobilenetv2.py`).

A stride-2 3x3 stem, seven groups of inverted residual blocks (expansion 1, then T = 6), a
1x1 conv to 1,280 channels, a global average and a linear head. `mobilenetv2` is the
benchmark's `mobile_half`: width 0.5. Convs are normal with std `sqrt(2 / (k * k * out_channels))`,
BatchNorm starts at 1 and 0, the head is normal(0, 0.01) with zero bias.

Roles: `stage1`..`stage4` (the outputs of groups 1, 2, 4 and 6, as mdistiller's `feats`),
`pooled`, `feature_map` (= `stage4`).
"""

from __future__ import annotations

import functools

import jax
from flax import linen as nn

from kdjax.zoo.layers import BatchNorm, Tap, conv, global_average

# (expansion, channels, blocks, first stride); expansion None is the network's T.
GROUPS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
          (None, 160, 3, 2), (None, 320, 1, 1))
STAGE_GROUPS = (1, 2, 4, 6)  # groups whose outputs are the stages


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 projection (each conv-BN, ReLU after the first two); residual when
    the stride is 1 and the width is kept."""

    planes: int
    stride: int
    expansion: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        hidden = x.shape[-1] * self.expansion
        y = nn.relu(norm(name="conv_1")(conv(hidden, 1, name="conv_0")(x)))
        y = nn.relu(norm(name="conv_4")(conv(hidden, 3, stride=self.stride, groups=hidden, name="conv_3")(y)))
        y = norm(name="conv_7")(conv(self.planes, 1, name="conv_6")(y))
        return x + y if self.stride == 1 and x.shape[-1] == self.planes else y


class MobileNetV2(nn.Module):
    """`[n, 32, 32, 3]` images -> `[n, num_classes]` logits."""

    expansion: int = 6
    width: float = 0.5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        x = nn.relu(norm(name="conv1_1")(conv(int(32 * self.width), 3, stride=2, name="conv1_0")(x)))
        for group, (expansion, channels, blocks, stride) in enumerate(GROUPS):
            for i in range(blocks):
                x = InvertedResidual(int(channels * self.width), stride if i == 0 else 1,
                                     expansion or self.expansion, name=f"blocks_{group}_{i}")(x, train)
        last = int(1280 * self.width) if self.width > 1.0 else 1280
        x = nn.relu(norm(name="conv2_1")(conv(last, 1, name="conv2_0")(x)))
        pooled = Tap(name="pooled")(global_average(x))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        bias_init=nn.initializers.zeros_init(), name="classifier_0")(pooled)


ROLES = {**{f"stage{i}": f"blocks_{group}_{GROUPS[group][2] - 1}" for i, group in enumerate(STAGE_GROUPS, start=1)},
         "pooled": "pooled", "feature_map": f"blocks_6_{GROUPS[6][2] - 1}"}
NETWORKS = {"mobilenetv2": MobileNetV2}
