"""Image data sets (CIFAR-10, CIFAR-100, a user's arrays) from tensorflow-datasets or local files, onto the device
in batches."""

from kdjax.data.formats import Split
from kdjax.data.pipeline import (MEAN, STD, TUTORIAL_NORMALIZATION, Normalization, ResidentLoader, augment_batch,
                                  channel_statistics, epoch_order, gather_batch, normalize)
from kdjax.data.sources import (DATA_DIR_ENV, DATASETS, DataNotFoundError, Dataset, from_arrays, load_cifar10,
                                 load_dataset, load_npz)

__all__ = [
    "DATA_DIR_ENV",
    "MEAN",
    "STD",
    "TUTORIAL_NORMALIZATION",
    "DATASETS",
    "Dataset",
    "Normalization",
    "DataNotFoundError",
    "ResidentLoader",
    "Split",
    "augment_batch",
    "channel_statistics",
    "epoch_order",
    "gather_batch",
    "from_arrays",
    "load_cifar10",
    "load_dataset",
    "load_npz",
    "normalize",
]
