"""Reading untrusted CIFAR-10 files: a restricted unpickler and a tar reader that never extracts."""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile
from typing import Any, Iterable

# What CIFAR-10's python batches (and numpy arrays pickled by any numpy) need, and nothing
# that can run code: array reconstruction, dtypes, and bytes from protocol-2 pickles.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class UnsafeDataError(ValueError):
    """A data file tried to do something a data file must not do."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeDataError(
            f"{self._source}: refusing to unpickle {module}.{name}; a CIFAR-10 batch holds only "
            "numpy arrays, bytes, lists and dicts. The file is corrupt or not what it claims to be."
        )


def load_pickle(data: bytes, source: str) -> Any:
    """Unpickle `data` allowing only numpy arrays and plain containers; `source` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafeDataError:
        raise
    except Exception as error:  # truncated or garbled pickles raise many different types
        raise ValueError(f"{source}: not a readable pickle ({type(error).__name__}: {error})") from error


def _check_member(archive: pathlib.Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = pathlib.PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UnsafeDataError(f"{archive}: member {name!r} points outside the archive; refusing to read it")
    if not (member.isfile() or member.isdir()):
        raise UnsafeDataError(
            f"{archive}: member {name!r} is a link or special file; CIFAR-10 archives hold only regular files"
        )


def read_tar_members(archive: pathlib.Path, wanted: Iterable[str]) -> dict[str, bytes]:
    """Bytes of the members whose base name is in `wanted`, read in memory; nothing is extracted.

    Every member is checked first: absolute paths, `..` and links make the whole archive
    rejected, since a legitimate CIFAR-10 archive has none.
    """
    wanted = set(wanted)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            for member in members:
                base = pathlib.PurePosixPath(member.name).name
                if member.isfile() and base in wanted:
                    if base in found:
                        raise UnsafeDataError(f"{archive}: {base!r} appears twice")
                    handle = tar.extractfile(member)
                    assert handle is not None  # regular files always have contents
                    found[base] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"{archive}: not a readable tar archive ({error})") from error
    return found
