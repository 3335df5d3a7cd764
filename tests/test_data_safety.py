"""Untrusted files: pickles that run code and archives that escape are refused."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest

from cifar_fakes import add_member, binary_bytes, fake_batch, write_copy
from kdjax.data import load_cifar10
from kdjax.data.safe_io import UnsafeDataError, load_pickle, read_tar_members


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(UnsafeDataError, match=r"refusing to unpickle posix.mkdir"):
        load_pickle(payload, "data_batch_1")
    assert not marker.exists()


def test_malicious_python_batch_in_a_copy_is_refused(tmp_path):
    folder = write_copy(tmp_path, "python", records=2)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(UnsafeDataError, match="data_batch_3: refusing"):
        load_cifar10(folder, strict=False)
    assert not marker.exists()


def test_numpy_payloads_still_load():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        loaded = load_pickle(pickle.dumps({b"data": array, b"labels": [1, 2]}, protocol=protocol), "x")
        np.testing.assert_array_equal(loaded[b"data"], array)


@pytest.mark.parametrize(
    "name,kind", [("../escape.bin", "file"), ("/abs/data_batch_1.bin", "file"), ("cifar-10-batches-bin/link", "symlink")]
)
def test_crafted_tar_is_refused_and_nothing_is_written(tmp_path, name, kind):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-bin/data_batch_1.bin", binary_bytes(*fake_batch(0, 1)))
        if kind == "symlink":
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            add_member(tar, name, b"x")
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(UnsafeDataError, match="refusing|link"):
        read_tar_members(archive, ["data_batch_1.bin"])
    with pytest.raises(UnsafeDataError):
        load_cifar10(archive, strict=False)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_garbage_archive_is_named(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"not a tar at all")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: not a readable tar archive"):
        load_cifar10(archive, strict=False)
