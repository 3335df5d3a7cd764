"""Folders that appear whole or not at all: a crash mid-write leaves the previous folder (or nothing) in place."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
from collections.abc import Iterator


@contextlib.contextmanager
def whole_folder(directory: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a sibling folder to write into; on success it replaces `directory`, on an exception it is removed."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        if directory.exists():
            shutil.rmtree(directory)
        partial.rename(directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
