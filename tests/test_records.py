"""`tfds:NAME`: a prepared tensorflow-datasets data set read through `as_data_source` without TensorFlow. An image
folder stored as records (`store_image_folder`) reads exactly as the folder does (views, labels, streamed
members); images of one shape load as arrays; what cannot be read is refused in one line."""

from __future__ import annotations

import json
import pathlib
import shutil
import types

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import tfds_fakes  # noqa: E402 - needs tensorflow_datasets
from engine_helpers import train_batchnorm  # noqa: E402
from test_stream import make_folder  # noqa: E402

from kdjax.data import DataNotFoundError, Dataset, ImageFileError, load_dataset  # noqa: E402
from kdjax.data.images import load_image_folder  # noqa: E402
from kdjax.data.normalization import choose  # noqa: E402
from kdjax.data.records import RecordImages, RecordLabels, _supervised_keys  # noqa: E402
from kdjax.data.stream import StreamingLoader, choose_loader  # noqa: E402
from kdjax.engine import Member  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """`(tfds data dir, image folder)`: the folder's JPEGs stored as `kdjax_photos`, beside `kdjax_digits`."""
    root = tmp_path_factory.mktemp("tfds")
    folder = make_folder(root / "images")
    return tfds_fakes.prepare(root / "data", folder), folder


def _both(prepared) -> tuple[Dataset, Dataset]:
    data_dir, folder = prepared
    return load_dataset("tfds:kdjax_photos", data_dir, image_size=32), load_image_folder(folder, size=32)


def test_tfds_images_of_many_shapes_stream_as_their_image_folder_does(prepared):
    """Records hold the folder's JPEG bytes in its order: worker processes read the same crops, labels and
    evaluation views, and the split is named by its files, not read."""
    data_dir, folder = prepared
    stored = tfds.builder_from_directory(str(data_dir / "kdjax_photos" / "1.0.0")).as_data_source("validation")
    assert [r["file_name"].decode() for r in stored] == [str(pathlib.Path(p).relative_to(folder))
                                                for p in load_image_folder(folder).test.inputs.paths]
    records, files = _both(prepared)
    assert isinstance(records.train.inputs, RecordImages) and isinstance(records.train.labels, RecordLabels)
    assert records.num_classes == files.num_classes == 3 and records.name == "kdjax_photos"
    assert records.train.inputs.random_crop and not records.test.inputs.random_crop
    np.testing.assert_array_equal(np.asarray(records.train.labels), files.train.labels)
    np.testing.assert_array_equal(np.asarray(records.test.inputs), np.asarray(files.test.inputs))
    np.testing.assert_array_equal(records.test.labels[np.array([[5, 0], [2, 3]])], files.test.labels[[[5, 0], [2, 3]]])
    keys = jax.random.split(jax.random.key(7), 2)
    read, expected = (list(map(jax.device_get, StreamingLoader(split, 5, keys, workers=workers).epoch(1)))
                      for split, workers in ((records.train, 2), (files.train, 0)))
    assert len(read) == len(expected) == 5
    for a, b in zip(read, expected):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    from kdjax.run import evaluation_view
    cut = evaluation_view(records.train.rows(slice(20, None)))  # --validation-size: scored on the validation view
    assert len(cut.inputs) == len(cut.labels) == 4 and cut.labels[np.array([0])] == files.train.labels[20]
    held_out = evaluation_view(files.train.rows(slice(20, None)))
    np.testing.assert_array_equal(np.asarray(cut.inputs), np.asarray(held_out.inputs))
    assert records.fingerprint == load_dataset("tfds:kdjax_photos", prepared[0], image_size=32).fingerprint
    assert cut.fingerprint() != records.train.fingerprint()
    assert choose_loader(records.train, "auto", 2**40)[0] == "streaming"
    assert choose("auto", dataset=records.name, train_images=records.train.inputs,
                  used_images=records.train.inputs)[0][0] == (0.485, 0.456, 0.406)  # ImageNet's, as image folders


def test_a_folder_stored_in_several_files_reads_back_in_its_order(prepared, tmp_path, monkeypatch):
    from kdjax.data import records
    monkeypatch.setattr(records, "SHARD_BYTES", 40_000)  # a few images per file
    directory = records.store_image_folder(prepared[1], tmp_path, "kdjax_shards")
    assert len(list(directory.glob("kdjax_shards-train.array_record-*-of-*"))) > 2
    with pytest.raises(FileExistsError, match="already holds the tfds data set kdjax_shards; delete it"):
        records.store_image_folder(prepared[1], tmp_path, "kdjax_shards")
    stored, files = load_dataset("tfds:kdjax_shards", tmp_path, image_size=32), load_image_folder(prepared[1], size=32)
    np.testing.assert_array_equal(np.asarray(stored.train.labels), files.train.labels)
    everything = np.arange(len(files.train))
    seeds = [(0, 1, 2, i) for i in everything]
    np.testing.assert_array_equal(stored.train.inputs.read(everything, seeds)[0],
                                  files.train.inputs.read(everything, seeds)[0])


def test_tfds_images_of_one_shape_load_as_arrays(prepared):
    digits = load_dataset("tfds:kdjax_digits", prepared[0])
    for split, name in ((digits.train, "train"), (digits.test, "test")):
        images, labels = tfds_fakes.pixels(name)
        assert isinstance(split.inputs, np.ndarray)
        np.testing.assert_array_equal(split.inputs, images)
        np.testing.assert_array_equal(split.labels, labels)
    assert digits.num_classes == 3 and digits.input_shape == (8, 8, 1)
    assert choose_loader(digits.train, "auto", 2**30)[0] == "resident"


@pytest.mark.slow
def test_streamed_tfds_members_are_bitwise_the_image_folders(prepared, tmp_path):
    """The whole engine: BatchNorm members trained two epochs from the records equal those trained from the
    files (parameters, statistics and history)."""
    members = [Member.of("ce", 0), Member.of("ce", 1)]
    programs = [train_batchnorm(tmp_path, members, name=name, data=data, epochs=2, batch_size=8,
                                data_loader="streaming", stream_workers=0)
                for name, data in zip(("records", "files"), _both(prepared))]
    states = [jax.tree.map(np.asarray, (p[0].states.params, p[0].states.model_state)) for p in programs]
    jax.tree.map(np.testing.assert_array_equal, *states)
    keep = ("train_loss", "test_loss", "test_accuracy")
    records, files = ([[{k: row[k] for k in keep} for row in r.history] for r in p[0].results] for p in programs)
    assert records == files


def test_tfds_data_that_cannot_be_read_is_refused_in_one_line(prepared, tmp_path):
    data_dir, folder = prepared
    with pytest.raises(DataNotFoundError, match=r"tfds:imagenet2012 is not prepared in .*data \(it holds kdjax_digits:"
                                                r"1.0.0, kdjax_photos:1.0.0\); prepare it with `tfds build"):
        load_dataset("tfds:imagenet2012", data_dir)
    with pytest.raises(DataNotFoundError, match=r"tfds:kdjax_nothing is not prepared"):
        load_dataset("tfds:kdjax_nothing", data_dir)
    with pytest.raises(DataNotFoundError, match="the tfds data dir .* does not exist"):
        load_dataset("tfds:kdjax_digits", tmp_path / "absent")
    stored = tmp_path / "tfrecord"
    shutil.copytree(data_dir / "kdjax_digits", stored / "kdjax_digits")
    info_file = stored / "kdjax_digits" / "1.0.0" / "dataset_info.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "fileFormat": "tfrecord"}))
    with pytest.raises(DataNotFoundError, match=r"is stored as tfrecord; streaming reads array_record: convert it "
                                                r"with `tfds convert_format --dataset_version_dir"):
        load_dataset("tfds:kdjax_digits", stored)
    text = types.SimpleNamespace(full_name="captions/1.0.0", supervised_keys=None, features=tfds.features.FeaturesDict(
        {"caption": tfds.features.Text(), "image": tfds.features.Image(shape=(None, None, 3))}))
    with pytest.raises(ValueError, match=r"reads an image feature and a class label; this data set has caption "
                                         r"\(Text\), image \(Image\)"):
        _supervised_keys(text)


def test_an_unreadable_image_record_is_named_or_skipped_and_counted(prepared, tmp_path):
    folder = shutil.copytree(prepared[1], tmp_path / "images")
    broken = folder / "train" / "n00000001" / "img3.JPEG"
    broken.write_bytes(broken.read_bytes()[:400])
    data_dir = tfds_fakes.prepare(tmp_path / "data", folder)
    keys = jax.random.split(jax.random.key(0), 1)
    strict = load_dataset("tfds:kdjax_photos", data_dir, image_size=32)
    with pytest.raises(ImageFileError, match=r"kdjax_photos/1.0.0 train record 11: cannot decode this image"):
        list(StreamingLoader(strict.train, 8, keys, workers=0).epoch(0))
    skipping = load_dataset("tfds:kdjax_photos", data_dir, image_size=32, skip_bad_images=True)
    loader = StreamingLoader(skipping.train, 8, keys, workers=0)
    batches = list(map(jax.device_get, loader.epoch(0)))
    assert loader.skipped == 1
    assert 11 in np.concatenate([b["index"][0][~b["present"][0]] for b in batches])
