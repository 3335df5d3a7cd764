"""Find CIFAR-10 wherever the user has it: a local copy or tensorflow-datasets."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from typing import Literal

from kdjax.data import tfds_source
from kdjax.data.formats import CANONICAL_NAMES, Split, detect_local, read_local

DATA_DIR_ENV = "KDJAX_DATA_DIR"
Source = Literal["auto", "local", "tfds"]


class DataNotFoundError(RuntimeError):
    """No CIFAR-10 could be found or fetched; the message lists what was tried."""


@dataclasses.dataclass(frozen=True)
class Cifar10:
    """Both splits and where they came from."""

    train: Split
    test: Split
    origin: str  # e.g. "binary-dir /data/cifar-10-batches-bin"
    load_seconds: float

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 over both splits' bytes (computed once): identifies the data a checkpoint was trained on."""
        return f"{self.train.fingerprint()[:32]}{self.test.fingerprint()[:32]}"

    def subset(self, train_size: int | None = None, test_size: int | None = None) -> "Cifar10":
        """The first `train_size` / `test_size` examples of each split (the tutorial's CPU subsets)."""
        return dataclasses.replace(self, train=self.train.take(train_size), test=self.test.take(test_size))


def _how_to_point() -> str:
    names = ", ".join(CANONICAL_NAMES.values())
    return (
        f"Point kdjax at a local copy with --data-dir PATH or {DATA_DIR_ENV}=PATH, where PATH is (or contains) "
        f"one of {names}, or a prepared tensorflow-datasets data dir."
    )


def _load_from_dir(path: pathlib.Path, strict: bool) -> tuple[Split, Split, str]:
    if not path.exists():
        raise DataNotFoundError(f"data dir {path} does not exist. {_how_to_point()}")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise DataNotFoundError(f"data dir {path} is not readable")
    found = detect_local(path)
    if found is not None:
        location, fmt = found
        train, test = read_local(location, fmt, strict=strict)
        return train, test, f"{fmt} {location}"
    if path.is_dir() and tfds_source.is_tfds_dir(path):
        train, test = tfds_source.read_tfds(path, download=False)
        return train, test, f"tfds {path}"
    raise DataNotFoundError(f"no CIFAR-10 found in {path}. {_how_to_point()}")


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    source: Source = "auto",
    strict: bool = True,
    download_timeout_s: float = 3.0,
) -> Cifar10:
    """Load CIFAR-10 (train 50,000 / test 10,000) as uint8 NHWC on the host.

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
        raise DataNotFoundError(f"source 'local' needs a data dir. {_how_to_point()}")
    if source == "local" or (source == "auto" and path is not None):
        train, test, origin = _load_from_dir(path, strict)
    else:
        train, test, origin = _load_tfds(path, download_timeout_s)
    return Cifar10(train, test, origin, time.perf_counter() - start)


def _load_tfds(path: pathlib.Path | None, download_timeout_s: float) -> tuple[Split, Split, str]:
    where = str(path) if path else "tfds's default data dir"
    tried = [f"tensorflow-datasets cifar10 prepared in {where}: not there"]
    if (path is not None and tfds_source.is_tfds_dir(path)) or (path is None and _prepared_in_default_dir()):
        train, test = tfds_source.read_tfds(path, download=False)
        return train, test, f"tfds {where}"
    if not tfds_source.can_reach_download_host(download_timeout_s):
        host = tfds_source.DOWNLOAD_HOST[0]
        tried.append(f"downloading it: {host} unreachable within {download_timeout_s:g} s (offline?)")
        raise DataNotFoundError("CIFAR-10 not found. Tried: " + "; ".join(tried) + ". " + _how_to_point())
    try:
        train, test = tfds_source.read_tfds(path, download=True)
    except RuntimeError as error:  # tfds or TensorFlow missing: the message says what to install
        raise DataNotFoundError(f"CIFAR-10 not found locally and {error}") from error
    return train, test, f"tfds {where} (downloaded)"


def _prepared_in_default_dir() -> bool:
    default = pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    return default.is_dir() and tfds_source.is_tfds_dir(default)
