"""Data sets beyond CIFAR-10: CIFAR-100 in its four layouts, a user's arrays and .npz files, and the errors bad
data gets before any training."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
from cifar_fakes import add_member

from kdjax.data import DataNotFoundError, Dataset, from_arrays, load_cifar10, load_dataset, load_npz
from kdjax.experiments.common import run


def _cifar100_split(seed: int, records: int):
    rng = np.random.default_rng(seed)
    planes = rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8)
    return planes, rng.integers(0, 20, records).astype(np.uint8), rng.integers(0, 100, records).astype(np.uint8)


def _files(layout: str, records: int) -> dict[str, bytes]:
    files = {}
    for seed, name in enumerate(("train", "test")):
        planes, coarse, fine = _cifar100_split(seed, records)
        if layout == "binary":
            rows = np.concatenate([coarse[:, None], fine[:, None], planes.reshape(records, -1)], axis=1)
            files[f"{name}.bin"] = rows.astype(np.uint8).tobytes()
        else:
            batch = {b"data": planes.reshape(records, -1), b"fine_labels": [int(v) for v in fine],
                     b"coarse_labels": [int(v) for v in coarse], b"filenames": [b"x.png"] * records}
            files[name] = pickle.dumps(batch, protocol=2)
    return files


@pytest.mark.parametrize("layout, as_tar", [("binary", False), ("binary", True), ("python", False), ("python", True)])
def test_cifar100_reads_its_fine_labels_from_each_layout(tmp_path, layout, as_tar):
    folder = {"binary": "cifar-100-binary", "python": "cifar-100-python"}[layout]
    files = _files(layout, 9)
    if as_tar:
        with tarfile.open(tmp_path / f"{folder}.tar.gz", "w:gz") as tar:
            for name, data in files.items():
                add_member(tar, f"{folder}/{name}", data)
    else:
        (tmp_path / folder).mkdir()
        for name, data in files.items():
            (tmp_path / folder / name).write_bytes(data)
    data = load_dataset("cifar100", tmp_path, strict=False)
    assert (data.name, data.num_classes, len(data.train), len(data.test)) == ("cifar100", 100, 9, 9)
    planes, _, fine = _cifar100_split(0, 9)
    np.testing.assert_array_equal(data.train.inputs, planes.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(data.train.labels, fine)
    with pytest.raises(ValueError, match="expected 50,000 records, found 9"):
        load_dataset("cifar100", tmp_path)  # strict: a truncated copy is named


def test_a_cifar10_copy_is_not_taken_for_cifar100(tmp_path):
    from cifar_fakes import write_copy

    write_copy(tmp_path, "binary")
    with pytest.raises(Exception, match="no CIFAR-100 found in .*cifar-100-binary"):
        load_dataset("cifar100", tmp_path, source="local", strict=False)


def test_arrays_of_any_shape_and_class_count_become_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 7, 20)
    np.savez(tmp_path / "digits.npz", x_train=images[:14], y_train=labels[:14], x_test=images[14:], y_test=labels[14:])
    data = load_npz(tmp_path / "digits.npz", num_classes=7)
    assert (data.input_shape, data.num_classes, len(data.train)) == ((28, 28, 1), 7, 14)
    floats = from_arrays(rng.random((6, 8, 8, 5)), np.arange(6) % 3, rng.random((2, 8, 8, 5)), np.array([0, 2]))
    assert (floats.num_classes, floats.input_shape) == (3, (8, 8, 5))


@pytest.mark.parametrize("arrays, message", [
    ((np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 9]), np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])),
     r"train labels must lie in \[0, 5\), found 0..9 .*state the class count"),
    ((np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, -1, 2]), np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])),
     r"train labels must lie in \[0, 5\), found -1..2 \(first at index 2: -1\); class ids start at 0: fix the labels$"),
    ((np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, int), np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])),
     "the train split is empty"),
    ((np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, int), np.zeros((2, 9, 8, 3), np.uint8), np.array([0, 1])),
     r"train inputs are uint8 \(8, 8, 3\) but test inputs are uint8 \(9, 8, 3\)"),
    ((np.zeros((4, 8, 8), np.uint8), np.zeros(4, int), np.zeros((2, 8, 8), np.uint8), np.array([0, 1])),
     r"add a channel axis to greyscale images"),
    ((np.zeros((4, 8, 8, 3), np.uint8), np.zeros(3, int), np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])),
     r"labels must be 4 integers"),
])
def test_bad_arrays_are_refused_naming_the_problem(arrays, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(*arrays, num_classes=5)


def test_an_npz_without_the_expected_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "odd.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"holds \['images'\]; it needs x_train, y_train, x_test, y_test"):
        load_npz(tmp_path / "odd.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        load_npz(tmp_path / "broken.npz")


@pytest.mark.slow
def test_commands_train_a_zoo_network_on_greyscale_arrays_and_refuse_the_tutorials(tmp_path, capsys):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (96, 28, 28), dtype=np.uint8), rng.integers(0, 4, 96)
    np.savez(tmp_path / "tiny.npz", x_train=images[:64], y_train=labels[:64], x_test=images[64:], y_test=labels[64:])
    places = ["--dataset", f"npz:{tmp_path / 'tiny.npz'}", "--checkpoint-dir", str(tmp_path / "ck"),
              "--output-dir", str(tmp_path / "runs"), "--epochs", "1", "--batch-size", "32"]
    assert run("baseline", places) == 1
    assert "lightnn is the tutorial's network for 32x32x3 images, not 28x28x1" in capsys.readouterr().err
    assert run("baseline", [*places, "--student", "resnet8", "--augment", "crop-flip"]) == 0
    out = capsys.readouterr().out
    assert "normalization: the training split's mean (" in out and "outputs in" in out
    (summary,) = (tmp_path / "runs").glob("baseline-*/summary.md")
    assert "resnet8" in summary.read_text()


def test_a_dataset_checks_its_own_labels():
    split = np.zeros((2, 4, 4, 1), np.uint8)
    from kdjax.data import Split

    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 2\)"):
        Dataset(Split(split, np.array([0, 1])), Split(split, np.array([0, 2])), "x", 0.0, 2, "x")


def test_a_folder_of_npy_files_is_told_how_to_become_a_data_set(tmp_path):
    np.save(tmp_path / "x_train.npy", np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataNotFoundError, match=r"holds x_train.npy: .* --dataset npz:FILE") as error:
        load_cifar10(tmp_path)
    assert "\n" not in str(error.value)
