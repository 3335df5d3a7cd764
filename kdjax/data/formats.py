"""CIFAR-10's canonical distributions: the binary and python layouts, as folders or tar.gz archives.

Every reader returns uint8 NHWC images and int32 labels and checks what it reads: file
sizes, record counts, label range and image shape, naming the offending file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Callable, Literal

import numpy as np

from kdjax.data.safe_io import load_pickle, read_tar_members

NUM_CLASSES = 10
RECORDS_PER_FILE = 10_000
_PIXELS = 32 * 32 * 3
_BINARY_RECORD = 1 + _PIXELS  # one label byte, then the red, green and blue planes

LocalFormat = Literal["binary-dir", "binary-tar", "python-dir", "python-tar"]
_FILES = {
    "binary": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    "python": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
}
# Names as the CIFAR-10 site (and torchvision's download) leave them.
CANONICAL_NAMES: dict[LocalFormat, str] = {
    "binary-dir": "cifar-10-batches-bin",
    "binary-tar": "cifar-10-binary.tar.gz",
    "python-dir": "cifar-10-batches-py",
    "python-tar": "cifar-10-python.tar.gz",
}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: `images` `[n, 32, 32, 3]` uint8 (RGB, NHWC), `labels` `[n]` int32 in [0, 10)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (32, 32, 3):
            raise ValueError(f"images must be uint8 [n, 32, 32, 3], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be [{len(self.images)}], got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> "Split":
        """The first `n` examples (all if None), as the tutorial's `Subset(dataset, range(n))`."""
        if n is None:
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        return Split(self.images[:n], self.labels[:n])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(self.labels.astype("<i4").tobytes())
        return digest.hexdigest()


def _check(labels: np.ndarray, count: int, expected: int | None, source: str) -> None:
    if expected is not None and count != expected:
        raise ValueError(f"{source}: expected {expected:,} records, found {count:,}; the file is truncated or not CIFAR-10")
    if count == 0:
        raise ValueError(f"{source}: holds no records")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{source}: labels must lie in [0, {NUM_CLASSES}), found {labels.min()}..{labels.max()}")


def parse_binary_batch(data: bytes, source: str, expected: int | None = RECORDS_PER_FILE) -> Split:
    """A `*.bin` batch: records of 1 label byte + 3,072 pixel bytes (R, G, B planes, row-major)."""
    if len(data) % _BINARY_RECORD:
        raise ValueError(
            f"{source}: {len(data):,} bytes is not a whole number of {_BINARY_RECORD:,}-byte records; "
            "the file is truncated or not CIFAR-10 binary"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _BINARY_RECORD)
    labels = records[:, 0].astype(np.int32)
    _check(labels, len(records), expected, source)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def parse_python_batch(data: bytes, source: str, expected: int | None = RECORDS_PER_FILE) -> Split:
    """A python-format batch: a pickled dict with `data` `[n, 3072]` uint8 and `labels` (list of n ints)."""
    batch = load_pickle(data, source)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{source}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    pixels = batch[b"data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        shape = getattr(pixels, "shape", None)
        raise ValueError(f"{source}: b'data' must be a uint8 array [n, 3072], got {type(pixels).__name__} {shape}")
    labels = np.asarray(batch[b"labels"])
    if labels.shape != (len(pixels),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: b'labels' must be {len(pixels)} integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int32)
    _check(labels, len(pixels), expected, source)
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def read_local(path: pathlib.Path, fmt: LocalFormat, *, strict: bool = True) -> tuple[Split, Split]:
    """Train and test splits from a CIFAR-10 folder or archive at `path`.

    With `strict`, every batch must hold exactly 10,000 records (50,000 train, 10,000 test).
    """
    layout = fmt.split("-")[0]
    train_names, test_names = _FILES[layout]
    parse: Callable[..., Split] = parse_binary_batch if layout == "binary" else parse_python_batch
    if fmt.endswith("-tar"):
        contents = read_tar_members(path, train_names + test_names)
        sources = {name: f"{path}:{name}" for name in contents}
    else:
        contents = {name: (path / name).read_bytes() for name in train_names + test_names if (path / name).is_file()}
        sources = {name: str(path / name) for name in contents}
    missing = [name for name in train_names + test_names if name not in contents]
    if missing:
        raise ValueError(f"{path}: incomplete CIFAR-10 {layout} copy, missing {', '.join(missing)}")
    expected = RECORDS_PER_FILE if strict else None
    read = lambda names: _concat([parse(contents[n], sources[n], expected) for n in names])  # noqa: E731
    return read(train_names), read(test_names)


def detect_local(path: pathlib.Path) -> tuple[pathlib.Path, LocalFormat] | None:
    """Which canonical CIFAR-10 layout `path` is, or holds directly inside it; None if none.

    Extracted folders win over archives when both are present (torchvision leaves both).
    """
    if path.is_dir():
        if (path / "data_batch_1.bin").is_file():
            return path, "binary-dir"
        if (path / "data_batch_1").is_file():
            return path, "python-dir"
        for fmt, name in CANONICAL_NAMES.items():
            if (path / name).exists():
                return path / name, fmt
        return None
    if path.is_file():
        for fmt, name in CANONICAL_NAMES.items():
            if fmt.endswith("-tar") and path.name == name:
                return path, fmt
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return path, "binary-tar" if "bin" in path.name else "python-tar"
    return None
