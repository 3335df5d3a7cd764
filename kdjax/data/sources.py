"""Data sets wherever the user has them: CIFAR-10 / CIFAR-100 as a local copy or through tensorflow-datasets,
or any image arrays (in memory or an `.npz` file)."""

from __future__ import annotations

import os
import pathlib
import time
import zipfile
from typing import Literal

import numpy as np

from kdjax.data import records, text, tfds_source
from kdjax.data.dataset import DataNotFoundError, Dataset, integer_labels
from kdjax.data.images import load_image_folder
from kdjax.data.normalization import IMAGE_FOLDERS
from kdjax.data.formats import CIFAR10, LAYOUTS, Layout, Split, detect_local, read_local

DATA_DIR_ENV = "KDJAX_DATA_DIR"
Source = Literal["auto", "local", "tfds"]


def _how_to_point(layout: Layout = CIFAR10) -> str:
    names = ", ".join(layout.canonical.values())
    return (
        f"Point kdjax at a local copy with --data-dir PATH or {DATA_DIR_ENV}=PATH, where PATH is (or contains) "
        f"one of {names}, or a prepared tensorflow-datasets data dir."
    )


def _load_from_dir(path: pathlib.Path, strict: bool, layout: Layout = CIFAR10) -> tuple[Split, Split, str]:
    if not path.exists():
        raise DataNotFoundError(f"data dir {path} does not exist. {_how_to_point(layout)}")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise DataNotFoundError(f"data dir {path} is not readable")
    found = detect_local(path, layout)
    if found is not None:
        location, fmt = found
        train, test = read_local(location, fmt, strict=strict, layout=layout)
        return train, test, f"{fmt} {location}"
    if path.is_dir() and tfds_source.is_tfds_dir(path, layout.name):
        train, test = tfds_source.read_tfds(path, download=False, name=layout.name)
        return train, test, f"tfds {path}"
    arrays = sorted(p.name for p in path.iterdir() if p.suffix in (".npy", ".npz"))[:4] if path.is_dir() else []
    if arrays:
        raise DataNotFoundError(
            f"no {layout.title} found in {path}, which holds {', '.join(arrays)}: for your own images save one .npz "
            "(np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)) and pass --dataset npz:FILE; for "
            "token ids, --dataset tokens:FILE.npy")
    raise DataNotFoundError(f"no {layout.title} found in {path}. {_how_to_point(layout)}")


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    source: Source = "auto",
    strict: bool = True,
    download_timeout_s: float = 3.0,
    layout: Layout = CIFAR10,
) -> Dataset:
    """Load CIFAR-10 (train 50,000 / test 10,000; `layout=CIFAR100` for CIFAR-100) as uint8 NHWC on the host.

    Args:
      data_dir: a local copy (see `_how_to_point`); defaults to `$KDJAX_DATA_DIR`.
      source: `local` needs `data_dir`; `tfds` uses tensorflow-datasets (downloading and
        preparing `cifar10` into `data_dir` or tfds's default dir on first use); `auto` is
        `local` when a data dir is given, else `tfds`.
      strict: require exactly 10,000 records per batch file (off only for tiny test copies).
      download_timeout_s: how long to wait for the download host before failing.

    Raises:
      DataNotFoundError: with the sources tried and how to point kdjax at a local copy.
      ValueError: a file is corrupt, truncated or unsafe (the message names it).
    """
    start = time.perf_counter()
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    path = None if data_dir is None else pathlib.Path(data_dir).expanduser()
    if source not in ("auto", "local", "tfds"):
        raise ValueError(f"source must be 'auto', 'local' or 'tfds', got {source!r}")
    if source == "local" and path is None:
        raise DataNotFoundError(f"source 'local' needs a data dir. {_how_to_point(layout)}")
    if source == "local" or (source == "auto" and path is not None):
        train, test, origin = _load_from_dir(path, strict, layout)
    else:
        train, test, origin = _load_tfds(path, download_timeout_s, layout)
    return Dataset(train, test, origin, time.perf_counter() - start, layout.classes, layout.name)


def _load_tfds(path: pathlib.Path | None, download_timeout_s: float, layout: Layout
               ) -> tuple[Split, Split, str]:
    where = str(path) if path else "tfds's default data dir"
    tried = [f"tensorflow-datasets {layout.name} prepared in {where}: not there"]
    if ((path is not None and tfds_source.is_tfds_dir(path, layout.name))
            or (path is None and _prepared_in_default_dir(layout.name))):
        train, test = tfds_source.read_tfds(path, download=False, name=layout.name)
        return train, test, f"tfds {where}"
    if not tfds_source.can_reach_download_host(download_timeout_s):
        host = tfds_source.DOWNLOAD_HOST[0]
        tried.append(f"downloading it: {host} unreachable within {download_timeout_s:g} s (offline?)")
        raise DataNotFoundError(f"{layout.title} not found. Tried: " + "; ".join(tried) + ". "
                                + _how_to_point(layout))
    try:
        train, test = tfds_source.read_tfds(path, download=True, name=layout.name)
    except RuntimeError as error:  # tfds or TensorFlow missing: the message says what to install
        raise DataNotFoundError(f"{layout.title} not found locally and {error}") from error
    return train, test, f"tfds {where} (downloaded)"


def _prepared_in_default_dir(name: str) -> bool:
    default = records.default_data_dir()
    return default.is_dir() and tfds_source.is_tfds_dir(default, name)


def from_arrays(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                test_labels: np.ndarray, *, num_classes: int | None = None, name: str = "arrays") -> Dataset:
    """A data set of a user's arrays: images `[n, height, width, channels]` uint8 (pixels) or float (on [0, 1],
    or already normalised: see `kdjax.data.normalization`), labels `[n]` integers in `[0, num_classes)`
    (default: the largest label + 1).

    Raises:
      ValueError: mismatched shapes, empty splits, labels that are not integers or out of range, NaN or infinite
        pixels, naming the split and the first bad index.
    """
    start = time.perf_counter()
    train = Split(np.asarray(train_images), integer_labels(train_labels, f"{name}: train labels"))
    test = Split(np.asarray(test_images), integer_labels(test_labels, f"{name}: test labels"))
    if num_classes is None:
        num_classes = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1))) + 1
    elif num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    return Dataset(train, test, name, time.perf_counter() - start, num_classes, name)


NPZ_KEYS = (("x_train", "y_train", "x_test", "y_test"), ("train_images", "train_labels", "test_images", "test_labels"))


def _npz_member(path: pathlib.Path, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """Array `key` of the `.npz` at `path`: memory-mapped where it is stored uncompressed (`np.savez`), so an
    archive of any size is read as batches need it; loaded whole where compressed (`np.savez_compressed`)."""
    info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local = file.read(30)  # the local file header: its name and extra-field lengths sit at bytes 26-29
        file.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(file)
        if dtype.hasobject:
            raise ValueError(f"{path}: {key} holds Python objects, which are not loaded (no pickle)")
        offset = file.tell()
    if not int(np.prod(shape)):
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")


def load_npz(path: str | os.PathLike, *, num_classes: int | None = None) -> Dataset:
    """A data set from an `.npz` file holding `x_train, y_train, x_test, y_test` (Keras' names) or
    `train_images, train_labels, test_images, test_labels`; greyscale `[n, h, w]` images get a channel axis.

    Arrays stored uncompressed (`np.savez`) are memory-mapped: the file may be larger than memory, and
    the engine streams it where it would not fit on the device. Nothing is unpickled: no code in the file runs.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"npz file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            files = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            keys = next((keys for keys in NPZ_KEYS if set(keys) <= set(files)), None)
            if keys is None:
                raise ValueError(f"{path} holds {sorted(files)}; it needs {', '.join(NPZ_KEYS[0])} "
                                 f"(or {', '.join(NPZ_KEYS[1])})")
            arrays = [_npz_member(path, archive, key) for key in keys]
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    except Exception as error:  # noqa: BLE001 - object arrays and bad headers raise ValueError
        if isinstance(error, ValueError) and str(path) in str(error):
            raise
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    for index in (0, 2):
        if arrays[index].ndim == 3:  # greyscale
            arrays[index] = arrays[index][..., None]
    return from_arrays(*arrays, num_classes=num_classes, name=f"npz {path}")


DATASETS = ("cifar10", "cifar100")


def load_dataset(dataset: str, data_dir: str | os.PathLike | None = None, *, source: Source = "auto",
                 strict: bool = True, window: int = 128, num_classes: int | None = None, image_size: int = 224,
                 skip_bad_images: bool = False) -> Dataset:
    """`dataset` (`cifar10`, `cifar100` or `npz:PATH`), from `data_dir` / tensorflow-datasets where that applies;
    next-token data (`text`, `text:PATH` by character, `bytes`, `bytes:PATH` by UTF-8 byte, `tokens:PATH` of an `.npy`
    of ids, memory-mapped) in windows of `window` tokens; image files in ImageNet's layout (`imagenet:DIR`,
    `imagefolder:DIR`: `kdjax.data.images.load_image_folder`) or a prepared tensorflow-datasets data set
    (`tfds:NAME`, from `data_dir`: `kdjax.data.records.load_tfds`) read at `image_size` pixels, unreadable ones
    skipped (counted) with `skip_bad_images`.

    `num_classes` states the class count (the vocabulary size of token data); by default it is the data set's
    own (CIFAR's, a text's alphabet) or the largest label (token id) + 1.
    """
    if dataset.startswith("npz:"):
        return load_npz(dataset[4:], num_classes=num_classes)
    for prefix in (*IMAGE_FOLDERS, records.PREFIX):
        if dataset.startswith(f"{prefix}:"):
            where, view = dataset[len(prefix) + 1:], {"size": image_size, "skip_unreadable": skip_bad_images}
            data = (records.load_tfds(where, data_dir, **view) if prefix == records.PREFIX
                    else load_image_folder(where, name=prefix, **view))
            if num_classes is not None and num_classes != data.num_classes:
                raise ValueError(f"{data.origin} has {data.num_classes} classes, not {num_classes}: leave the class "
                                 "count out")
            return data
    for prefix, kind in text.TEXT_DATASETS.items():
        if dataset == prefix or dataset.startswith(f"{prefix}:"):
            return text.load_text(dataset[len(prefix) + 1:] or None, time=window, vocab_size=num_classes, tokens=kind)
    if dataset.startswith("tokens:"):
        return text.load_tokens(dataset[7:], time=window, vocab_size=num_classes)
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}, npz:PATH, imagenet:DIR or "
                         "tfds:NAME (sequence data: kdjax.data.load_text)")
    layout = LAYOUTS[dataset]
    if num_classes is not None and num_classes != layout.classes:
        raise ValueError(f"{layout.title} has {layout.classes} classes, not {num_classes}: leave the class count out")
    return load_cifar10(data_dir, source=source, strict=strict, layout=layout)
