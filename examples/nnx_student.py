"""Distil the linen ResNet of `resnet_to_cnn.py` into an NNX CNN student through kdjax's engine.

    python examples/nnx_student.py --data-dir DIR [--epochs 5]
    python examples/nnx_student.py --synthetic --epochs 1 --train-size 256

The NNX model is built by a factory from `nnx.Rngs(key)`, so each seed gets its own initial
weights; its intermediates are read by module path exactly as for linen models, and its
`nnx.BatchStat`s are carried as its state (updated in training, read in evaluation).
"""

from __future__ import annotations

import pathlib
import sys

from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from resnet_to_cnn import distil  # noqa: E402

from kdjax.network import Network, nnx_network  # noqa: E402


class NnxCNN(nnx.Module):
    """conv 16 -> BatchNorm -> pool -> conv 16 (`block2`) -> global average -> dropout -> linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.block1 = nnx.Conv(3, 16, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(16, rngs=rngs)
        self.block2 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.norm1(self.block1(x))), (2, 2), (2, 2))
        x = nnx.relu(self.block2(x))
        return self.head(self.dropout(x.mean(axis=(1, 2))))


def student_network() -> Network:
    return nnx_network(lambda rngs: NnxCNN(rngs), input_shape=(32, 32, 3), roles={"feature_map": "block2"})


if __name__ == "__main__":
    distil(student_network())
