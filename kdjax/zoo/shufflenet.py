"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for CIFAR, as the distillation benchmarks define
them (mdistiller's `ShuffleNetv1.py`, `ShuffleNetv2.py`).

Both: a 1x1 stem of 24 channels, three stages that each halve the size, a global average and a
linear head. `shufflenetv1`: groups 3, 240-480-960 channels, 4-8-4 bottlenecks (grouped 1x1,
shuffle, depthwise 3x3, grouped 1x1; the first of a stage concatenates a 3x3 average-pooled
shortcut). `shufflenetv2`: size 1, 116-232-464 channels, a down-sampling block then 3-7-3
split-and-shuffle blocks, a 1x1 conv to 1,024. Every conv and the head keep PyTorch's default
initialisation, BatchNorm starts at 1 and 0.

Roles: `stage1`..`stage3`, `preact1`..`preact3` (each stage's last block before its final
ReLU, mdistiller's `preact_feats`), `pooled`, `feature_map` (= `stage3`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from kdjax.zoo.initializers import torch_kernel_init
from kdjax.zoo.layers import BatchNorm, Tap, channel_shuffle, conv, global_average, torch_dense

torch_conv = functools.partial(conv, kernel_init=torch_kernel_init)


class BottleneckV1(nn.Module):
    """ShuffleNet V1's unit; returns `(relu(preact), preact)`."""

    planes: int
    stride: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        middle = self.planes // 4
        first_groups = 1 if x.shape[-1] == 24 else self.groups  # the stem's 24 channels are not grouped
        out = nn.relu(norm(name="bn1")(torch_conv(middle, 1, groups=first_groups, name="conv1")(x)))
        out = channel_shuffle(out, first_groups)
        out = nn.relu(norm(name="bn2")(torch_conv(middle, 3, stride=self.stride, groups=middle, name="conv2")(out)))
        out = norm(name="bn3")(torch_conv(self.planes, 1, groups=self.groups, name="conv3")(out))
        if self.stride == 2:
            shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
            preact = jnp.concatenate([out, shortcut], axis=-1)
        else:
            preact = out + x
        return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """`[n, 32, 32, 3]` images -> `[n, num_classes]` logits."""

    planes: tuple[int, int, int] = (240, 480, 960)
    blocks: tuple[int, int, int] = (4, 8, 4)
    groups: int = 3
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(BatchNorm(not train, name="bn1")(torch_conv(24, 1, name="conv1")(x)))
        for stage, (planes, blocks) in enumerate(zip(self.planes, self.blocks), start=1):
            for i in range(blocks):
                concatenated = x.shape[-1] if i == 0 else 0  # the first unit's shortcut supplies these channels
                x, preact = BottleneckV1(planes - concatenated, 2 if i == 0 else 1, self.groups,
                                         name=f"layer{stage}_{i}")(x, train)
            x = Tap(name=f"stage{stage}")(x)
            Tap(name=f"preact{stage}")(preact)
        pooled = Tap(name="pooled")(global_average(x))
        return torch_dense(self.num_classes, self.planes[-1], name="linear")(pooled)


class BasicBlockV2(nn.Module):
    """ShuffleNet V2's unit: half the channels pass, half go through 1x1, depthwise 3x3, 1x1; then a shuffle.

    Returns `(output, preact)`, preact being the concatenation before the last ReLU and the shuffle.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        half = x.shape[-1] // 2
        passed, branch = x[..., :half], x[..., half:]
        out = nn.relu(norm(name="bn1")(torch_conv(half, 1, name="conv1")(branch)))
        out = norm(name="bn2")(torch_conv(half, 3, groups=half, name="conv2")(out))
        out = norm(name="bn3")(torch_conv(half, 1, name="conv3")(out))
        preact = jnp.concatenate([passed, out], axis=-1)
        return channel_shuffle(jnp.concatenate([passed, nn.relu(out)], axis=-1), 2), preact


class DownBlockV2(nn.Module):
    """ShuffleNet V2's down-sampling unit: two stride-2 branches concatenated, then a shuffle."""

    planes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        middle, channels = self.planes // 2, x.shape[-1]
        left = norm(name="bn1")(torch_conv(channels, 3, stride=2, groups=channels, name="conv1")(x))
        left = nn.relu(norm(name="bn2")(torch_conv(middle, 1, name="conv2")(left)))
        right = nn.relu(norm(name="bn3")(torch_conv(middle, 1, name="conv3")(x)))
        right = norm(name="bn4")(torch_conv(middle, 3, stride=2, groups=middle, name="conv4")(right))
        right = nn.relu(norm(name="bn5")(torch_conv(middle, 1, name="conv5")(right)))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """`[n, 32, 32, 3]` images -> `[n, num_classes]` logits."""

    planes: tuple[int, int, int, int] = (116, 232, 464, 1024)
    blocks: tuple[int, int, int] = (3, 7, 3)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        x = nn.relu(norm(name="bn1")(torch_conv(24, 1, name="conv1")(x)))
        for stage, (planes, blocks) in enumerate(zip(self.planes, self.blocks), start=1):
            x = DownBlockV2(planes, name=f"layer{stage}_0")(x, train)
            for i in range(1, blocks + 1):
                x, preact = BasicBlockV2(name=f"layer{stage}_{i}")(x, train)
            x = Tap(name=f"stage{stage}")(x)
            Tap(name=f"preact{stage}")(preact)
        x = nn.relu(norm(name="bn2")(torch_conv(self.planes[3], 1, name="conv2")(x)))
        pooled = Tap(name="pooled")(global_average(x))
        return torch_dense(self.num_classes, self.planes[3], name="linear")(pooled)


ROLES = {**{f"stage{i}": f"stage{i}" for i in (1, 2, 3)}, **{f"preact{i}": f"preact{i}" for i in (1, 2, 3)},
         "pooled": "pooled", "feature_map": "stage3"}
NETWORKS = {"shufflenetv1": ShuffleNetV1, "shufflenetv2": ShuffleNetV2}
