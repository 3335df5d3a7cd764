"""A data set as the engine takes it: both splits, the class count, and the checks every source passes through."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kdjax.data.formats import Split, chunks
from kdjax.tasks import NEXT_TOKEN, Task


class DataNotFoundError(RuntimeError):
    """No data set could be found or fetched; the message lists what was tried."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Both splits of a data set (images and classes, or token windows and a vocabulary: `kdjax.tasks`), its
    class count (vocabulary size) and where it came from."""

    train: Split
    test: Split
    origin: str  # e.g. "binary-dir /data/cifar-10-batches-bin"
    load_seconds: float
    num_classes: int = 10
    name: str = "cifar10"

    def __post_init__(self) -> None:
        for split_name, split in (("train", self.train), ("test", self.test)):
            if not len(split):
                raise ValueError(f"{self.name}: the {split_name} split is empty")
            if isinstance(split.labels, np.ndarray):  # windows read on demand were checked as tokens, once
                _check_range(split.labels, self.num_classes, f"{self.name}: {split_name} labels")
            if split.task is NEXT_TOKEN and isinstance(split.inputs, np.ndarray):
                _check_range(split.inputs, self.num_classes, f"{self.name}: {split_name} token ids")
            elif np.issubdtype(split.inputs.dtype, np.floating):
                _check_finite(split.inputs, f"{self.name}: {split_name} images")
        if self.train.inputs.shape[1:] != self.test.inputs.shape[1:] or self.train.task != self.test.task:
            raise ValueError(f"{self.name}: train inputs are {self.train.inputs.dtype} {self.train.inputs.shape[1:]} "
                             f"but test inputs are {self.test.inputs.dtype} {self.test.inputs.shape[1:]}")

    @property
    def task(self) -> Task:
        return self.train.task

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over both splits' bytes (computed once): identifies the data a checkpoint was trained on."""
        return f"{self.train.fingerprint()[:32]}{self.test.fingerprint()[:32]}"

    def subset(self, train_size: int | None = None, test_size: int | None = None) -> "Dataset":
        """The first `train_size` / `test_size` examples of each split (the tutorial's CPU subsets)."""
        return dataclasses.replace(self, train=self.train.take(train_size), test=self.test.take(test_size))


def _check_range(values, count: int, what: str) -> None:
    """ValueError naming the first example of `values` outside `[0, count)`, read a chunk at a time."""
    start = 0
    for chunk in chunks(values):
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= count:
            bad = ((chunk < 0) | (chunk >= count)).reshape(len(chunk), -1)
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            hint = ("class ids start at 0: fix the labels" if low < 0 else
                    "state the class count (num_classes, --num-classes) if there are more, or fix the labels")
            raise ValueError(f"{what} must lie in [0, {count}), found {low}..{high} (first at index {start + row}: "
                             f"{int(chunk[row].flat[np.argmax(bad[row])])}); {hint}")
        start += len(chunk)


def _check_finite(images, what: str) -> None:
    """ValueError naming the first image of `images` with a NaN or infinite pixel."""
    start = 0
    for chunk in chunks(images):
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            index = start + int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{what} hold NaN or infinite pixels (first at index {index}): replace or drop those "
                             "images before training")
        start += len(chunk)


def integer_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """`labels` as int32 if they are integers; ValueError otherwise (floats, strings, booleans are not cast)."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        if labels.size and (labels.min() < np.iinfo(np.int32).min or labels.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{what} exceed int32's range ({labels.min()}..{labels.max()})")
        return labels.astype(np.int32)
    example = f" ({labels.flat[0].item()!r}, ...)" if labels.size else ""
    if np.issubdtype(labels.dtype, np.floating):
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if whole.all():
            raise ValueError(f"{what} are {labels.dtype}, not integers: pass them as labels.astype(np.int64)")
        index = int(np.flatnonzero(~whole)[0])
        raise ValueError(f"{what} must be integer class ids, got {labels.dtype} with "
                         f"{labels.flat[index].item()!r} at index {index}")
    raise ValueError(f"{what} must be integer class ids, got {labels.dtype}{example}: map them to 0..classes-1 first")
