"""Tiny CIFAR-10 copies in every canonical layout, written by the tests themselves."""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import numpy as np

TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_NAME = "test_batch"


def fake_batch(seed: int, records: int) -> tuple[np.ndarray, np.ndarray]:
    """`[records, 3, 32, 32]` uint8 planes and labels, as CIFAR stores them."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, records).astype(np.uint8)


def binary_bytes(planes: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels[:, None], planes.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def python_bytes(planes: np.ndarray, labels: np.ndarray) -> bytes:
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(label) for label in labels],
        b"data": planes.reshape(len(labels), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)  # CIFAR's batches are protocol-2 pickles


def expected_split(seeds: list[int], records: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [fake_batch(seed, records) for seed in seeds]
    images = np.concatenate([p.transpose(0, 2, 3, 1) for p, _ in parts])
    return images, np.concatenate([l for _, l in parts]).astype(np.int32)


def write_copy(root: pathlib.Path, layout: str, records: int = 7, as_tar: bool = False) -> pathlib.Path:
    """Write a `records`-per-batch copy in `layout` ("binary" or "python"); returns its canonical path."""
    suffix = ".bin" if layout == "binary" else ""
    encode = binary_bytes if layout == "binary" else python_bytes
    folder = "cifar-10-batches-bin" if layout == "binary" else "cifar-10-batches-py"
    files = {name + suffix: encode(*fake_batch(seed, records)) for seed, name in enumerate(TRAIN_NAMES + [TEST_NAME])}
    if not as_tar:
        (root / folder).mkdir(parents=True)
        for name, data in files.items():
            (root / folder / name).write_bytes(data)
        return root / folder
    archive = root / ("cifar-10-binary.tar.gz" if layout == "binary" else "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            add_member(tar, f"{folder}/{name}", data)
    return archive


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
