"""Data sets (CIFAR-10, CIFAR-100, a user's image arrays, token arrays and text, image folders, prepared
tensorflow-datasets data sets) from tensorflow-datasets or local files, onto the device in batches: resident
there, or streamed by grain."""

from kdjax.data.formats import Split
from kdjax.data.normalization import (MEAN, STD, TUTORIAL_NORMALIZATION, Normalization, NormalizationError,
                                       channel_statistics, normalize)
from kdjax.data.pipeline import ResidentLoader, augment_batch, epoch_order, gather_batch
from kdjax.data.dataset import DataNotFoundError, Dataset
from kdjax.data.images import ImageFileError, load_image_folder
from kdjax.data.records import load_tfds
from kdjax.data.stream import StreamingLoader
from kdjax.data.sources import DATA_DIR_ENV, DATASETS, from_arrays, load_cifar10, load_dataset, load_npz
from kdjax.data.text import PYTHON_TEXT, from_tokens, load_text, windows

__all__ = [
    "DATA_DIR_ENV",
    "MEAN",
    "STD",
    "TUTORIAL_NORMALIZATION",
    "DATASETS",
    "Dataset",
    "Normalization",
    "NormalizationError",
    "DataNotFoundError",
    "ImageFileError",
    "StreamingLoader",
    "PYTHON_TEXT",
    "ResidentLoader",
    "Split",
    "augment_batch",
    "channel_statistics",
    "epoch_order",
    "gather_batch",
    "from_arrays",
    "from_tokens",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "load_text",
    "load_tfds",
    "normalize",
    "windows",
]
