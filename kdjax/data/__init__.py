"""CIFAR-10 from tensorflow-datasets or a local copy, onto the device in batches."""

from kdjax.data.formats import Split
from kdjax.data.pipeline import MEAN, STD, ResidentLoader, StreamingLoader, epoch_order, normalize
from kdjax.data.sources import DATA_DIR_ENV, Cifar10, DataNotFoundError, load_cifar10

__all__ = [
    "DATA_DIR_ENV",
    "MEAN",
    "STD",
    "Cifar10",
    "DataNotFoundError",
    "ResidentLoader",
    "Split",
    "StreamingLoader",
    "epoch_order",
    "load_cifar10",
    "normalize",
]
