"""Loading CIFAR-10 from every canonical layout, tfds (mock data), and the failures users meet."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_fakes import TEST_NAME, binary_bytes, expected_split, fake_batch, python_bytes, write_copy
from kdjax.data import DATA_DIR_ENV, DataNotFoundError, load_cifar10
from kdjax.data import tfds_source
from kdjax.data.formats import parse_binary_batch


@pytest.mark.parametrize("layout", ["binary", "python"])
@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar.gz"])
def test_local_layouts_load_exactly(tmp_path, layout, as_tar):
    path = write_copy(tmp_path, layout, records=7, as_tar=as_tar)
    for given in (path, tmp_path):  # the copy itself, or the folder that holds it
        data = load_cifar10(given, strict=False)
        images, labels = expected_split([0, 1, 2, 3, 4], 7)
        np.testing.assert_array_equal(data.train.inputs, images)
        np.testing.assert_array_equal(data.train.labels, labels)
        test_images, test_labels = expected_split([5], 7)
        np.testing.assert_array_equal(data.test.inputs, test_images)
        np.testing.assert_array_equal(data.test.labels, test_labels)
        assert data.origin.startswith(f"{layout}-{'tar' if as_tar else 'dir'} ")


def test_binary_record_layout_is_label_then_rgb_planes():
    planes = np.zeros((1, 3, 32, 32), np.uint8)
    planes[0, 0, 0, 1], planes[0, 1, 2, 3], planes[0, 2, 31, 30] = 11, 22, 33  # R(0,1) G(2,3) B(31,30)
    split = parse_binary_batch(binary_bytes(planes, np.array([6], np.uint8)), "x", expected=1)
    assert split.labels[0] == 6
    assert (split.inputs[0, 0, 1, 0], split.inputs[0, 2, 3, 1], split.inputs[0, 31, 30, 2]) == (11, 22, 33)


def test_strict_mode_demands_canonical_record_counts(tmp_path):
    write_copy(tmp_path, "binary", records=7)
    with pytest.raises(ValueError, match=r"data_batch_1.bin: expected 10,000 records, found 7"):
        load_cifar10(tmp_path)


def test_truncated_file_is_named(tmp_path):
    folder = write_copy(tmp_path, "binary", records=3)
    data = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"data_batch_2.bin: .* not a whole number of 3,073-byte records"):
        load_cifar10(folder, strict=False)


def test_labels_out_of_range_are_named(tmp_path):
    folder = write_copy(tmp_path, "binary", records=3)
    planes, _ = fake_batch(9, 3)
    (folder / "test_batch.bin").write_bytes(binary_bytes(planes, np.array([1, 12, 3], np.uint8)))
    with pytest.raises(ValueError, match=r"test_batch.bin: labels must lie in \[0, 10\)"):
        load_cifar10(folder, strict=False)


def test_python_batch_of_wrong_shape_is_named(tmp_path):
    folder = write_copy(tmp_path, "python", records=3)
    planes, labels = fake_batch(9, 3)
    (folder / TEST_NAME).write_bytes(python_bytes(planes[:, :, :16], labels))
    with pytest.raises(ValueError, match=r"test_batch: b'data' must be a uint8 array \[n, 3072\]"):
        load_cifar10(folder, strict=False)


def test_missing_batch_is_named(tmp_path):
    folder = write_copy(tmp_path, "binary", records=3)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(ValueError, match="missing data_batch_4.bin"):
        load_cifar10(folder, strict=False)


def test_environment_variable_points_at_a_copy(tmp_path, monkeypatch):
    write_copy(tmp_path, "binary", records=2)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert len(load_cifar10(strict=False).train) == 10


def test_unusable_data_dir_says_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist.*--data-dir PATH"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="no CIFAR-10 found in .*cifar-10-batches-bin"):
        load_cifar10(tmp_path)


def test_offline_without_a_copy_fails_fast_listing_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOST", ("127.0.0.1", 9))  # nothing listens: refused at once
    with pytest.raises(DataNotFoundError) as error:
        load_cifar10()
    message = str(error.value)
    assert "prepared in tfds's default data dir: not there" in message
    assert "unreachable" in message and "--data-dir" in message


def test_tfds_source_with_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "can_reach_download_host", lambda timeout_s: True)
    with tfds.testing.mock_data(num_examples=12):
        data = load_cifar10(source="tfds")
    assert data.origin.endswith("(downloaded)")
    for split in (data.train, data.test):
        assert split.inputs.shape == (12, 32, 32, 3) and split.inputs.dtype == np.uint8
        assert split.labels.dtype == np.int32 and split.labels.min() >= 0 and split.labels.max() < 10


def test_download_without_tensorflow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_source, "can_reach_download_host", lambda timeout_s: True)
    tfds = pytest.importorskip("tensorflow_datasets")

    def prepare_without_tensorflow(*args, **kwargs):  # what tfds's lazy `import tensorflow` raises
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds, "data_source", prepare_without_tensorflow)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataNotFoundError, match=r"needs TensorFlow: pip install 'kdjax\[tfds\]'"):
        load_cifar10(tmp_path / "tfds", source="tfds")


def test_prepared_tfds_dir_is_detected(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
    (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
    with tfds.testing.mock_data(num_examples=5):
        data = load_cifar10(tmp_path)
    assert data.origin == f"tfds {tmp_path}" and len(data.train) == 5


def test_subsets_are_the_first_examples(tmp_path):
    write_copy(tmp_path, "binary", records=4)
    data = load_cifar10(tmp_path, strict=False)
    small = data.subset(train_size=6, test_size=3)
    np.testing.assert_array_equal(small.train.inputs, data.train.inputs[:6])
    assert (len(small.train), len(small.test)) == (6, 3)
    assert small.fingerprint != data.fingerprint
    with pytest.raises(ValueError, match="subset size must be positive"):
        data.subset(train_size=0)


@pytest.mark.slow
def test_full_local_copy(cifar10_copy):
    data = load_cifar10(cifar10_copy)
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    np.testing.assert_array_equal(np.bincount(data.train.labels), [5_000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [1_000] * 10)
    channel_mean = data.train.inputs.reshape(-1, 3).mean(axis=0) / 255.0
    np.testing.assert_allclose(channel_mean, (0.491, 0.482, 0.447), atol=0.01)
