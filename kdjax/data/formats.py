"""CIFAR-10's and CIFAR-100's canonical distributions: the binary and python layouts, as folders or tar.gz archives.

Every reader returns uint8 NHWC images and int32 labels and checks what it reads: file
sizes, record counts, label range and image shape, naming the offending file. CIFAR-100
gives its 100 fine labels (the coarse ones are read past).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Callable, Iterator, Literal

import numpy as np

from kdjax.data.safe_io import load_pickle, read_tar_members
from kdjax.tasks import NEXT_TOKEN, Task, task_of

NUM_CLASSES = 10
RECORDS_PER_FILE = 10_000
_PIXELS = 32 * 32 * 3

LocalFormat = Literal["binary-dir", "binary-tar", "python-dir", "python-tar"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """One data set's files: train and test file names per layout, canonical names, label bytes, class count."""

    name: str  # tensorflow-datasets' name
    title: str  # for messages
    classes: int
    files: dict[str, tuple[list[str], list[str]]]  # "binary" / "python" -> (train files, test files)
    canonical: dict[LocalFormat, str]  # as the data set's site (and torchvision's download) leave them
    label_bytes: int  # binary records: label bytes before the pixels (the last is the label read)
    label_key: bytes  # python batches: the labels' key
    records: tuple[int, int]  # per train file, per test file


CIFAR10 = Layout("cifar10", "CIFAR-10", 10, {"binary": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
                                 "python": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])},
                 {"binary-dir": "cifar-10-batches-bin", "binary-tar": "cifar-10-binary.tar.gz",
                  "python-dir": "cifar-10-batches-py", "python-tar": "cifar-10-python.tar.gz"},
                 1, b"labels", (RECORDS_PER_FILE, RECORDS_PER_FILE))
CIFAR100 = Layout("cifar100", "CIFAR-100", 100, {"binary": (["train.bin"], ["test.bin"]), "python": (["train"], ["test"])},
                  {"binary-dir": "cifar-100-binary", "binary-tar": "cifar-100-binary.tar.gz",
                   "python-dir": "cifar-100-python", "python-tar": "cifar-100-python.tar.gz"},
                  2, b"fine_labels", (50_000, 10_000))  # binary: coarse label byte, then fine
LAYOUTS = {layout.name: layout for layout in (CIFAR10, CIFAR100)}
CANONICAL_NAMES = CIFAR10.canonical


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of examples (`kdjax.tasks`): images `[n, height, width, channels]` (uint8 pixels, or floats
    already scaled) with labels `[n]`, or token windows `[n, time]` with next-token labels `[n, time]` and an
    optional boolean `mask` `[n, time]` of the positions that count.

    `inputs` and `labels` may be memory-mapped, or read on demand (`kdjax.data.images.ImageFiles`,
    `kdjax.data.text.TokenWindows`: array-like objects with `shape`, `dtype` and slicing); such
    splits are streamed (`kdjax.data.stream`) rather than put on the device whole.
    """

    inputs: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        task = task_of(self.inputs, self.labels)
        if self.mask is not None and (task is not NEXT_TOKEN or self.mask.shape != self.labels.shape
                                      or self.mask.dtype != np.bool_):
            raise ValueError(f"a mask must be boolean [n, time] beside token windows, got {self.mask.dtype} "
                             f"{self.mask.shape} for {task.name} labels {self.labels.shape}")

    @property
    def task(self) -> Task:
        return task_of(self.inputs, self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> "Split":
        """The first `n` examples (all if None), as the tutorial's `Subset(dataset, range(n))`."""
        if n is None:
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        return self.rows(slice(0, n))

    def rows(self, which: slice) -> "Split":
        """The examples `which` selects, with their mask."""
        return Split(self.inputs[which], self.labels[which], None if self.mask is None else self.mask[which])

    def arrays(self) -> dict[str, np.ndarray]:
        """`{"inputs", "labels"[, "mask"]}`: what the engine puts on the device and gathers batches from."""
        return {"inputs": np.asarray(self.inputs), "labels": np.asarray(self.labels),
                **({} if self.mask is None else {"mask": np.asarray(self.mask)})}

    def fingerprint(self) -> str:
        """SHA-256 over the examples, read a chunk at a time (a memory-mapped split is never loaded whole); an
        array read on demand that names itself (`fingerprint()`: image files by their paths and sizes, records by
        their files) is named so, not read."""
        digest = hashlib.sha256()
        for array, cast in ((self.inputs, None), (self.labels, "<i4"), (self.mask, None)):
            own = getattr(array, "fingerprint", None)
            if own is not None:
                digest.update(own().encode())
                continue
            for chunk in chunks(array):
                digest.update(np.ascontiguousarray(chunk if cast is None else chunk.astype(cast)).tobytes())
        return digest.hexdigest()


CHUNK_BYTES = 64 * 2**20


def chunks(array) -> "Iterator[np.ndarray]":
    """`array` (None: nothing) as NumPy arrays of about `CHUNK_BYTES` along its first axis."""
    if array is None:
        return
    row_bytes = max(1, int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize)
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, len(array), step):
        yield np.asarray(array[start:start + step])


def _check(labels: np.ndarray, count: int, expected: int | None, source: str, layout: Layout) -> None:
    if expected is not None and count != expected:
        raise ValueError(f"{source}: expected {expected:,} records, found {count:,}; the file is truncated or not "
                         f"{layout.title}")
    if count == 0:
        raise ValueError(f"{source}: holds no records")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.classes):
        raise ValueError(f"{source}: labels must lie in [0, {layout.classes}), found {labels.min()}..{labels.max()}")


def parse_binary_batch(data: bytes, source: str, expected: int | None = RECORDS_PER_FILE,
                       layout: Layout = CIFAR10) -> Split:
    """A `*.bin` batch: records of the label byte(s) + 3,072 pixel bytes (R, G, B planes, row-major)."""
    record = layout.label_bytes + _PIXELS
    if len(data) % record:
        raise ValueError(
            f"{source}: {len(data):,} bytes is not a whole number of {record:,}-byte records; "
            f"the file is truncated or not {layout.title} binary"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, record)
    labels = records[:, layout.label_bytes - 1].astype(np.int32)
    _check(labels, len(records), expected, source, layout)
    images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def parse_python_batch(data: bytes, source: str, expected: int | None = RECORDS_PER_FILE,
                       layout: Layout = CIFAR10) -> Split:
    """A python-format batch: a pickled dict with `data` `[n, 3072]` uint8 and the labels (list of n ints)."""
    batch = load_pickle(data, source)
    key = layout.label_key
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise ValueError(f"{source}: expected a dict with b'data' and {key!r}, got {type(batch).__name__}")
    pixels = batch[b"data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        shape = getattr(pixels, "shape", None)
        raise ValueError(f"{source}: b'data' must be a uint8 array [n, 3072], got {type(pixels).__name__} {shape}")
    labels = np.asarray(batch[key])
    if labels.shape != (len(pixels),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: {key!r} must be {len(pixels)} integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int32)
    _check(labels, len(pixels), expected, source, layout)
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.inputs for s in splits]), np.concatenate([s.labels for s in splits]))


def read_local(path: pathlib.Path, fmt: LocalFormat, *, strict: bool = True,
               layout: Layout = CIFAR10) -> tuple[Split, Split]:
    """Train and test splits from a `layout` (CIFAR-10 or CIFAR-100) folder or archive at `path`.

    With `strict`, every file must hold its full record count (50,000 train, 10,000 test in all).
    """
    kind = fmt.split("-")[0]
    train_names, test_names = layout.files[kind]
    parse: Callable[..., Split] = parse_binary_batch if kind == "binary" else parse_python_batch
    if fmt.endswith("-tar"):
        contents = read_tar_members(path, train_names + test_names)
        sources = {name: f"{path}:{name}" for name in contents}
    else:
        contents = {name: (path / name).read_bytes() for name in train_names + test_names if (path / name).is_file()}
        sources = {name: str(path / name) for name in contents}
    missing = [name for name in train_names + test_names if name not in contents]
    if missing:
        raise ValueError(f"{path}: incomplete {layout.title} {kind} copy, missing {', '.join(missing)}")

    def read(names: list[str], records: int) -> Split:
        return _concat([parse(contents[n], sources[n], records if strict else None, layout) for n in names])

    return read(train_names, layout.records[0]), read(test_names, layout.records[1])


def detect_local(path: pathlib.Path, layout: Layout = CIFAR10) -> tuple[pathlib.Path, LocalFormat] | None:
    """Which canonical `layout` distribution `path` is, or holds directly inside it; None if none.

    Extracted folders win over archives when both are present (torchvision leaves both).
    """
    if path.is_dir():
        binary, python = layout.files["binary"][0][0], layout.files["python"][0][0]
        if (path / binary).is_file():
            return path, "binary-dir"
        if (path / python).is_file() and (path / layout.files["python"][1][0]).is_file():
            return path, "python-dir"
        for fmt, name in layout.canonical.items():
            if (path / name).exists():
                return path / name, fmt
        return None
    if path.is_file():
        for fmt, name in layout.canonical.items():
            if fmt.endswith("-tar") and path.name == name:
                return path, fmt
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return path, "binary-tar" if "bin" in path.name else "python-tar"
    return None
