"""Tiny tensorflow-datasets data sets prepared as array_record (without TensorFlow: images are handed to tfds
encoded), for the `tfds:NAME` source's tests."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DIGITS = {"train": 12, "test": 6}  # examples per split of `kdjax_digits`


class KdjaxPhotos(tfds.core.GeneratorBasedBuilder):
    """The JPEGs of an image folder in ImageNet's layout (`folder`, set before preparing), one record per file in
    the folder's own order: train/ is `train`, val/ is `validation`."""

    VERSION = tfds.core.Version("1.0.0")
    folder: pathlib.Path | None = None

    def _info(self) -> tfds.core.DatasetInfo:
        classes = sorted(p.name for p in (self.folder / "train").iterdir())
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=classes),
            "file_name": tfds.features.Text()}), supervised_keys=("image", "label"), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train"), "validation": self._generate_examples("val")}

    def _generate_examples(self, split: str):
        names = self.info.features["label"].names
        files = sorted(self.folder.glob(f"{split}/*/*.JPEG"), key=lambda p: (names.index(p.parent.name), p.name))
        for key, path in enumerate(files):
            yield key, {"image": str(path), "label": path.parent.name, "file_name": str(path)}


class KdjaxDigits(tfds.core.GeneratorBasedBuilder):
    """8 x 8 greyscale PNGs of three classes, `pixels(split)` in order: images of one fixed shape."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=3)}),
            supervised_keys=("image", "label"), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in DIGITS}

    def _generate_examples(self, split: str):
        images, labels = pixels(split)
        for key, (image, label) in enumerate(zip(images, labels)):
            png = io.BytesIO()
            Image.fromarray(image[..., 0]).save(png, format="PNG")
            yield key, {"image": io.BytesIO(png.getvalue()), "label": int(label)}


def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """`kdjax_digits`' images `[n, 8, 8, 1]` uint8 and labels `[n]` of `split`."""
    rng = np.random.default_rng(len(split))
    return rng.integers(0, 256, (DIGITS[split], 8, 8, 1), dtype=np.uint8), np.arange(DIGITS[split]) % 3


def prepare(data_dir: pathlib.Path, folder: pathlib.Path | None = None) -> pathlib.Path:
    """`kdjax_digits` and, given an image folder, `kdjax_photos`, prepared in `data_dir`."""
    builders = [KdjaxDigits]
    if folder is not None:
        KdjaxPhotos.folder = folder
        builders.append(KdjaxPhotos)
    for builder in builders:
        builder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir
