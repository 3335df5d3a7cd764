"""CIFAR-10 and CIFAR-100 through tensorflow-datasets, imported lazily so local copies need neither tfds nor
TensorFlow."""

from __future__ import annotations

import concurrent.futures
import pathlib
import socket

from kdjax.data.formats import Split
from kdjax.data.records import decoded_split, import_tfds

DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where tfds fetches cifar-10-binary.tar.gz (and CIFAR-100's)


def can_reach_download_host(timeout_s: float = 3.0) -> bool:
    """Whether the CIFAR-10 download host answers within `timeout_s` (DNS included)."""
    def connect() -> None:
        socket.create_connection(DOWNLOAD_HOST, timeout=timeout_s).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout_s)
        return True
    except Exception:  # noqa: BLE001 - DNS failure, refusal and timeout all mean "offline"
        return False
    finally:
        pool.shutdown(wait=False)


def is_tfds_dir(path: pathlib.Path, name: str = "cifar10") -> bool:
    """Whether `path` is a tfds data dir holding a prepared `name`."""
    return any(path.glob(f"{name}/*/dataset_info.json"))


def read_tfds(data_dir: pathlib.Path | None, *, download: bool, name: str = "cifar10") -> tuple[Split, Split]:
    """Train and test splits from tfds `name` (`cifar10`, `cifar100`: its `label` is the fine label; array_record),
    preparing it first if `download`.

    Preparing needs TensorFlow (tfds's CIFAR-10 builder reads with `tf.io`); reading a
    prepared array_record copy does not.
    """
    tfds = import_tfds("pip install 'kdjax[tfds]', or point kdjax at a local CIFAR-10 copy with --data-dir / "
                       "KDJAX_DATA_DIR")
    try:
        sources = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        raise RuntimeError(
            "preparing CIFAR-10 with tensorflow-datasets needs TensorFlow: pip install 'kdjax[tfds]', "
            "or point kdjax at a local copy with --data-dir / KDJAX_DATA_DIR"
        ) from error
    return decoded_split(sources[0]), decoded_split(sources[1])
