"""CIFAR-10 from tensorflow-datasets or a local copy, onto the device in batches."""

from kdjax.data.formats import Split
from kdjax.data.pipeline import (MEAN, STD, TUTORIAL_NORMALIZATION, Normalization, ResidentLoader, augment_batch,
                                  channel_statistics, epoch_order, gather_batch, normalize)
from kdjax.data.sources import DATA_DIR_ENV, Cifar10, DataNotFoundError, load_cifar10

__all__ = [
    "DATA_DIR_ENV",
    "MEAN",
    "STD",
    "TUTORIAL_NORMALIZATION",
    "Cifar10",
    "Normalization",
    "DataNotFoundError",
    "ResidentLoader",
    "Split",
    "augment_batch",
    "channel_statistics",
    "epoch_order",
    "gather_batch",
    "load_cifar10",
    "normalize",
]
