"""CIFAR-10 from tensorflow-datasets or a local copy, onto the device in batches."""

from kdjax.data.formats import Split
from kdjax.data.pipeline import MEAN, STD, ResidentLoader, augment_batch, epoch_order, gather_batch, normalize
from kdjax.data.sources import DATA_DIR_ENV, Cifar10, DataNotFoundError, load_cifar10

__all__ = [
    "DATA_DIR_ENV",
    "MEAN",
    "STD",
    "Cifar10",
    "DataNotFoundError",
    "ResidentLoader",
    "Split",
    "augment_batch",
    "epoch_order",
    "gather_batch",
    "load_cifar10",
    "normalize",
]
