"""The ImageNet networks of the distillation benchmarks: torchvision's ResNets and mdistiller's MobileNetV1.

`resnet18`, `resnet34` (basic blocks) and `resnet50` (bottlenecks, the stride on the 3x3 conv as
torchvision's "v1.5"): a 7x7 stride-2 stem, a 3x3 stride-2 max pool, four stages of 64-128-256-512
planes (x4 for bottlenecks), a global average and a linear head; convs kaiming-normal (fan-out),
BatchNorm at 1 and 0, the head PyTorch's default, as torchvision initialises them. Parameter names
are torchvision's `state_dict` keys, so its released files load (`kdjax.convert.zoo_from_torch`).

`mobilenetv1` is mdistiller's ImageNet MobileNetV1 (Howard et al. 2017): a stride-2 3x3 conv-BN-ReLU
stem and 13 depthwise-separable blocks (3x3 depthwise conv-BN-ReLU, 1x1 conv-BN-ReLU) to 1,024
channels, averaged (mdistiller's `AvgPool2d(7)`, the global average at 224 pixels) into a linear
head; PyTorch's default initialisation, as that definition leaves it.

Roles: `stage1`..`stage4` (each stage's output), `preact1`..`preact4` (before its last ReLU, as
mdistiller's `preact_feats`), `pooled` `[n, c]`, `feature_map` (= `stage4`). They take images of any
size; the benchmarks' are 224x224.
"""

from __future__ import annotations

import functools

import jax
from flax import linen as nn

from kdjax.zoo.initializers import torch_kernel_init
from kdjax.zoo.layers import BatchNorm, Tap, conv, global_average, residual_sum, torch_dense
from kdjax.zoo.resnet import BasicBlock  # the CIFAR ResNets' block: torchvision's, layer for layer

STAGE_PLANES = (64, 128, 256, 512)
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}


class Bottleneck(nn.Module):
    """1x1 conv-BN-ReLU, 3x3 (strided) conv-BN-ReLU, 1x1 conv-BN to `4 * planes`, plus the shortcut."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        out = nn.relu(norm(name="bn1")(conv(self.planes, 1, name="conv1")(x)))
        out = nn.relu(norm(name="bn2")(conv(self.planes, 3, stride=self.stride, name="conv2")(out)))
        out = norm(name="bn3")(conv(self.planes * 4, 1, name="conv3")(out))
        return residual_sum(out, x, self.planes * 4, self.stride, norm)


class ResNet(nn.Module):
    """`[n, h, w, 3]` images -> `[n, num_classes]` logits, in torchvision's layout."""

    blocks: tuple[int, int, int, int]
    bottleneck: bool = False
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        block = Bottleneck if self.bottleneck else BasicBlock
        x = nn.relu(BatchNorm(not train, name="bn1")(conv(64, 7, stride=2, name="conv1")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (planes, count) in enumerate(zip(STAGE_PLANES, self.blocks), start=1):
            for i in range(count):
                x, preact = block(planes, 2 if stage > 1 and i == 0 else 1, name=f"layer{stage}_{i}")(x, train)
            x = Tap(name=f"stage{stage}")(x)
            Tap(name=f"preact{stage}")(preact)
        pooled = Tap(name="pooled")(global_average(x))
        return torch_dense(self.num_classes, pooled.shape[-1], name="fc")(pooled)


# (output channels, stride) of MobileNetV1's depthwise-separable blocks; stages end after blocks 3, 5, 11 and 13.
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2),
                    (1024, 1))
MOBILENET_STAGE_ENDS = (3, 5, 11, 13)


class MobileNetV1(nn.Module):
    """`[n, h, w, 3]` images -> `[n, num_classes]` logits; module `model_i_j` is mdistiller's `model[i][j]`."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train)
        plain = functools.partial(conv, kernel_init=torch_kernel_init)
        x = nn.relu(norm(name="model_0_1")(plain(32, 3, stride=2, name="model_0_0")(x)))
        stage = 0
        for i, (channels, stride) in enumerate(MOBILENET_BLOCKS, start=1):
            x = nn.relu(norm(name=f"model_{i}_1")(plain(x.shape[-1], 3, stride=stride, groups=x.shape[-1],
                                                        name=f"model_{i}_0")(x)))
            preact = norm(name=f"model_{i}_4")(plain(channels, 1, name=f"model_{i}_3")(x))
            x = nn.relu(preact)
            if i in MOBILENET_STAGE_ENDS:
                stage += 1
                x = Tap(name=f"stage{stage}")(x)
                Tap(name=f"preact{stage}")(preact)
        pooled = Tap(name="pooled")(global_average(x))
        return torch_dense(self.num_classes, pooled.shape[-1], name="fc")(pooled)


ROLES = {**{f"stage{i}": f"stage{i}" for i in range(1, 5)}, **{f"preact{i}": f"preact{i}" for i in range(1, 5)},
         "pooled": "pooled", "feature_map": "stage4"}
NETWORKS = {**{name: functools.partial(ResNet, blocks, name == "resnet50") for name, blocks in RESNET_BLOCKS.items()},
            "mobilenetv1": MobileNetV1}
