"""A prepared tensorflow-datasets data set read through `as_data_source`: array_record files, random access,
no TensorFlow (`--dataset tfds:NAME`).

Images of one fixed shape (MNIST's, CIFAR's) are decoded once into arrays, as any array data set.
Images of many shapes (ImageNet's) stay in their records: `RecordImages` decodes each one on the
host as it is read, with `kdjax.data.images`' views, and `RecordLabels` reads the labels with
them, so nothing reads every record up front. Records are opened on first use in each process;
what a grain worker unpickles is the data set's folder, not open files. `store_image_folder`
writes an image folder as such a data set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import os
import pathlib
import time
from typing import Any

import numpy as np

from kdjax.data.dataset import DataNotFoundError, Dataset
from kdjax.data.formats import Split
from kdjax.data.images import HostImages, evaluation_resize, folder_files

PREFIX = "tfds"  # `--dataset tfds:NAME`
EVALUATION_SPLITS = ("validation", "test")  # the first one a data set has is the one students are scored on
READ_CHUNK = 1024  # records per read when every label of a split is read
SHARD_BYTES = 2**30  # store_image_folder: about this many bytes of images per array_record file


def import_tfds(how: str = "pip install tensorflow-datasets (reading needs no TensorFlow)") -> Any:
    """tensorflow_datasets, imported on first use; `DataNotFoundError` saying `how` to install it where it is
    absent."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataNotFoundError(f"tensorflow-datasets is not installed: {how}") from error
    return tfds


def default_data_dir() -> pathlib.Path:
    """Where tfds keeps prepared data sets unless told: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


@functools.lru_cache(maxsize=16)
def _source(directory: str, split: str, raw: tuple[str, ...]) -> Any:
    """The split's random-access source, opened once per process; `raw` features stay encoded bytes."""
    tfds = import_tfds()
    decoders = {key: tfds.decode.SkipDecoding() for key in raw}
    return tfds.builder_from_directory(directory).as_data_source(split, decoders=decoders or None)


@dataclasses.dataclass(frozen=True)
class Records:
    """Records `rows` of `split` of the tfds data set prepared in `directory` (`DATA_DIR/NAME[/CONFIG]/VERSION`);
    the `raw` features are read as their encoded bytes."""

    directory: str
    split: str
    rows: range
    raw: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def cut(self, which: slice) -> "Records":
        return dataclasses.replace(self, rows=self.rows[which])

    def read(self, indices) -> list[dict[str, Any]]:
        """The records at `indices` (positions in `rows`), one read for them all."""
        return _source(self.directory, self.split, self.raw).__getitems__([self.rows[int(i)] for i in indices])

    def name(self, index: int) -> str:
        return f"{self.directory} {self.split} record {self.rows[int(index)]}"

    def fingerprint(self) -> str:
        """SHA-256 of the folder, the split, the rows and the split's file names and sizes: names the records
        without reading them."""
        digest = hashlib.sha256(f"{self.directory}\0{self.split}\0{self.rows}\n".encode())
        for path in sorted(pathlib.Path(self.directory).glob(f"*-{self.split}.array_record-*")):
            digest.update(f"{path.name}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class RecordImages(HostImages):
    """Images stored encoded (JPEG, PNG) in feature `key` of `records`, decoded with `HostImages`' views."""

    records: Records
    key: str

    def __len__(self) -> int:
        return len(self.records)

    def _cut(self, which: slice) -> "RecordImages":
        return dataclasses.replace(self, records=self.records.cut(which))

    def _encoded(self, indices: np.ndarray) -> list[tuple[object, str]]:
        return [(io.BytesIO(record[self.key]), self.records.name(i))
                for i, record in zip(indices, self.records.read(indices))]

    def fingerprint(self) -> str:
        return f"{self.records.fingerprint()}:{self.key}"


@dataclasses.dataclass(frozen=True, eq=False)
class RecordLabels:
    """Class labels `[n]` int32 of feature `key` of `records`, read when indexed (an array-like `Split.labels`;
    a streamed batch reads its records again for them, from the page cache)."""

    records: Records
    key: str

    dtype = np.dtype(np.int32)
    ndim = 1

    @property
    def shape(self) -> tuple[int]:
        return (len(self.records),)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, which) -> "RecordLabels | np.ndarray":
        """A slice: those records' labels, unread. Indices: the labels there."""
        if isinstance(which, slice):
            return dataclasses.replace(self, records=self.records.cut(which))
        indices = np.asarray(which)
        labels = [record[self.key] for record in self.records.read(indices.reshape(-1))]
        return np.asarray(labels, np.int32).reshape(indices.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        labels = np.concatenate([self[np.arange(start, min(start + READ_CHUNK, len(self)))]
                                 for start in range(0, len(self), READ_CHUNK)])
        return labels if dtype is None else labels.astype(dtype)

    def fingerprint(self) -> str:
        return f"{self.records.fingerprint()}:{self.key}"


def decoded_split(source: Any, image_key: str = "image", label_key: str = "label") -> Split:
    """Every record of a random-access source (`tfds.data_source`) decoded: images `[n, h, w, c]` uint8 (of one
    fixed shape), labels `[n]` int32."""
    records = [source[index] for index in range(len(source))]
    return Split(np.stack([r[image_key] for r in records]).astype(np.uint8),
                 np.asarray([r[label_key] for r in records], np.int32))


def _prepared(root: pathlib.Path) -> list[str]:
    """`NAME[/CONFIG]:VERSION` of every data set prepared under `root`."""
    found = [info.parent.relative_to(root) for info in root.glob("**/dataset_info.json")]
    return sorted(f"{'/'.join(p.parts[:-1])}:{p.parts[-1]}" for p in found if len(p.parts) >= 2)


def _builder(name: str, data_dir: str | os.PathLike | None) -> Any:
    """The prepared builder of `name` (`NAME[/CONFIG][:VERSION]`) in `data_dir` (default: tfds's), checked."""
    tfds = import_tfds()
    root = (pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()).absolute()
    build = (f"prepare it with `tfds build {name.split(':')[0]} --data_dir {root} --file_format array_record`, or "
             "point --data-dir at the tfds data dir that holds it")
    if not root.is_dir():
        raise DataNotFoundError(f"tfds:{name}: the tfds data dir {root} does not exist; {build}")
    try:
        builder = tfds.builder(name, data_dir=str(root))
    except tfds.core.registered.DatasetNotFoundError:  # its message lists every data set tfds knows
        builder = None
    if builder is None or not (pathlib.Path(str(builder.data_dir)) / "dataset_info.json").is_file():
        there = ", ".join(_prepared(root)[:8]) or "nothing"
        raise DataNotFoundError(f"tfds:{name} is not prepared in {root} (it holds {there}); {build}")
    formats = {str(getattr(f, "value", f)) for f in (builder.info.file_format,
                                                     *getattr(builder.info, "alternative_file_formats", ()))}
    if "array_record" not in formats:
        raise DataNotFoundError(
            f"tfds:{name} in {builder.data_dir} is stored as {', '.join(sorted(formats))}; streaming reads "
            f"array_record: convert it with `tfds convert_format --dataset_version_dir {builder.data_dir} "
            "--out_file_format array_record`")
    return builder


def _supervised_keys(info: Any) -> tuple[str, str]:
    """The image and class-label features: the data set's supervised keys, else its one Image and one ClassLabel."""
    tfds = import_tfds()
    features = info.features
    keys = info.supervised_keys
    if not keys:
        images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        keys = (images[0], labels[0]) if len(images) == len(labels) == 1 else None
    if (not keys or len(keys) != 2 or not isinstance(features[keys[0]], tfds.features.Image)
            or not isinstance(features[keys[1]], tfds.features.ClassLabel)):
        raise ValueError(f"tfds:{info.full_name}: kdjax reads an image feature and a class label; this data set has "
                         f"{', '.join(f'{k} ({type(f).__name__})' for k, f in features.items())}")
    return keys[0], keys[1]


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, *, size: int = 224,
              skip_unreadable: bool = False) -> Dataset:
    """A tensorflow-datasets data set prepared as array_record in `data_dir` (default `$TFDS_DATA_DIR` or
    `~/tensorflow_datasets`), read without TensorFlow: its `train` split, and `validation` (else `test`) to
    score on.

    `name` is tfds's `NAME[/CONFIG][:VERSION]` (`imagenet2012`, `mnist:3.0.1`). Images of one
    fixed shape are decoded into arrays at once; images of many shapes are read from their
    records as batches need them, as `RandomResizedCrop(size)` + flip for training and the resize +
    centre crop for evaluation (ImageNet's views, as image folders read them).

    Raises:
      DataNotFoundError: `name` is not prepared there, or not as array_record (the message says how to).
      ValueError: it has no image feature and class label.
    """
    start = time.perf_counter()
    builder = _builder(name, data_dir)
    info, directory = builder.info, str(builder.data_dir)
    image_key, label_key = _supervised_keys(info)
    splits = list(info.splits)
    evaluation = next((s for s in EVALUATION_SPLITS if s in splits), None)
    if "train" not in splits or evaluation is None:
        raise ValueError(f"tfds:{name} has splits {', '.join(splits)}; kdjax trains on 'train' and scores on "
                         f"'{EVALUATION_SPLITS[0]}' or '{EVALUATION_SPLITS[1]}'")
    image_shape = info.features[image_key].shape
    if None not in image_shape:
        train, test = (decoded_split(_source(directory, split, ()), image_key, label_key)
                       for split in ("train", evaluation))
    else:
        view = {"size": size, "resize": evaluation_resize(size), "skip_unreadable": skip_unreadable}

        def streamed(split: str) -> Split:
            records = Records(directory, split, range(info.splits[split].num_examples), (image_key,))
            return Split(RecordImages(records=records, key=image_key, random_crop=split == "train", **view),
                         RecordLabels(records, label_key))

        train, test = streamed("train"), streamed(evaluation)
    return Dataset(train, test, f"tfds {directory}", time.perf_counter() - start,
                   info.features[label_key].num_classes, info.name)


def store_image_folder(root: str | os.PathLike, data_dir: str | os.PathLike, name: str = "image_folder",
                       version: str = "1.0.0") -> pathlib.Path:
    """Write the image folder at `root` (ImageNet's layout, as `kdjax.data.images.load_image_folder` reads it) as
    the tfds data set `name` in `data_dir`, array_record files that `tfds:NAME` reads: each file's bytes as they
    are (no re-encoding), its class and its path under `root`, in the folder's order (`train/` is `train`, the
    validation folder `validation`), a file per `SHARD_BYTES` of images. Returns the data set's folder
    (`data_dir/NAME/VERSION`).

    A few large files instead of one per image: what a network file system serves best. Written a
    record at a time (constant memory) with array_record's writer and tfds's serializer, no
    TensorFlow; the metadata goes last, so an interrupted write is never taken for a prepared set.
    """
    tfds = import_tfds()
    from array_record.python.array_record_module import ArrayRecordWriter

    root = pathlib.Path(root).expanduser()
    directory = pathlib.Path(data_dir).expanduser().absolute() / name / version
    if (directory / "dataset_info.json").is_file():
        raise FileExistsError(f"{directory} already holds the tfds data set {name}; delete it, or store under another "
                              "name or version")
    train, held_out, classes = folder_files(root)
    splits = {"train": train, "validation": held_out}
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                           "label": tfds.features.ClassLabel(names=classes),
                                           "file_name": tfds.features.Text()})
    directory.mkdir(parents=True, exist_ok=True)
    infos = []
    for split, (paths, labels) in splits.items():
        shards = max(1, math.ceil(sum(os.path.getsize(p) for p in paths) / SHARD_BYTES))
        bounds = np.linspace(0, len(paths), shards + 1).round().astype(int)
        written = 0
        for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            writer = ArrayRecordWriter(str(directory / f"{name}-{split}.array_record-{shard:05d}-of-{shards:05d}"),
                                       "group_size:1")  # one record per group: random access reads one image
            for path, label in zip(paths[start:stop], labels[start:stop]):
                record = features.serialize_example({"image": path, "label": int(label),
                                                     "file_name": str(pathlib.Path(path).relative_to(root))})
                writer.write(record)
                written += len(record)
            writer.close()
        infos.append(tfds.core.SplitInfo(name=split, shard_lengths=np.diff(bounds).tolist(), num_bytes=written))
    tfds.folder_dataset.write_metadata(data_dir=directory, features=features, split_infos=infos, check_data=False,
                                       supervised_keys=("image", "label"), disable_shuffling=True,
                                       description=f"The image folder {root}.")
    return directory
