"""VGG with BatchNorm as the distillation benchmarks define it for CIFAR (mdistiller's `vgg.py`).

Five blocks of 3x3 conv-BN(-ReLU) layers; a 2x2 max pool before blocks 1-3 (and before block
4 for 64x64 inputs), a global average and a linear head of 512 inputs. `vgg8`: one conv per
block; `vgg11`, `vgg13`, `vgg16`, `vgg19`: Simonyan & Zisserman's configurations A, B, D, E.
Convs are normal with std `sqrt(2 / (k * k * out_channels))` and zero bias, BatchNorm starts
at 1 and 0, the head is normal(0, 0.01) with zero bias.

Roles: `stage0`..`stage4` (each block after its ReLU), `preact1`..`preact4` (each block's last
BatchNorm, before the ReLU), `pooled`, `feature_map` (= `stage4`).
"""

from __future__ import annotations

import functools

import jax
from flax import linen as nn

from kdjax.zoo.layers import BatchNorm, Tap, conv, global_average

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _last_norm(block: int, widths: tuple[int, ...]) -> str:
    """The path of a block's last BatchNorm: each conv takes three `nn.Sequential` slots (conv, BN, ReLU)."""
    return f"block{block}_{3 * (len(widths) - 1) + 1}"


class VGG(nn.Module):
    """`[n, 32, 32, 3]` (or 64x64) images -> `[n, num_classes]` logits."""

    config: tuple[tuple[int, ...], ...]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        size = x.shape[1]
        for block, widths in enumerate(self.config):
            if 0 < block < 4 or (block == 4 and size == 64):
                x = nn.max_pool(x, (2, 2), (2, 2))
            for i, width in enumerate(widths):
                if i:
                    x = nn.relu(x)
                x = conv(width, 3, bias=True, name=f"block{block}_{3 * i}")(x)
                x = BatchNorm(not train, name=f"block{block}_{3 * i + 1}")(x)
            x = Tap(name=f"stage{block}")(nn.relu(x))
        pooled = Tap(name="pooled")(global_average(x))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        bias_init=nn.initializers.zeros_init(), name="classifier")(pooled)


def roles(name: str) -> dict[str, str]:
    config = CONFIGS[name]
    return {**{f"stage{b}": f"stage{b}" for b in range(5)},
            **{f"preact{b}": _last_norm(b, config[b]) for b in range(1, 5)}, "pooled": "pooled", "feature_map": "stage4"}


NETWORKS = {name: functools.partial(VGG, config) for name, config in CONFIGS.items()}
