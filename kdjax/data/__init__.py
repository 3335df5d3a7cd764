"""Data sets (CIFAR-10, CIFAR-100, a user's image arrays, token arrays and text, image folders) from
tensorflow-datasets or local files, onto the device in batches: resident there, or streamed by grain."""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it: imported on first use, so that a streaming worker unpickling a reader
# (`kdjax.data.reading`) loads NumPy alone, not JAX.
_EXPORTS = {
    **dict.fromkeys(["Split"], "kdjax.data.formats"),
    **dict.fromkeys(["MEAN", "STD", "TUTORIAL_NORMALIZATION", "Normalization", "NormalizationError",
                     "channel_statistics", "normalize"], "kdjax.data.normalization"),
    **dict.fromkeys(["ResidentLoader", "augment_batch", "epoch_order", "gather_batch"], "kdjax.data.pipeline"),
    **dict.fromkeys(["DataNotFoundError", "Dataset"], "kdjax.data.dataset"),
    **dict.fromkeys(["ImageFileError", "load_image_folder"], "kdjax.data.images"),
    **dict.fromkeys(["StreamingLoader"], "kdjax.data.stream"),
    **dict.fromkeys(["DATA_DIR_ENV", "DATASETS", "from_arrays", "load_cifar10", "load_dataset", "load_npz"],
                    "kdjax.data.sources"),
    **dict.fromkeys(["PYTHON_TEXT", "from_tokens", "load_text", "windows"], "kdjax.data.text"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdjax.data' has no attribute {name!r}")


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
    "normalize",
    "windows",
]
