"""Tiny tensorflow-datasets data sets prepared as array_record (without TensorFlow: images are handed to tfds
encoded), for the `tfds:NAME` source's tests: an image folder stored by `kdjax.data.records.store_image_folder`,
and a data set of fixed-shape images."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from kdjax.data.records import store_image_folder

DIGITS = {"train": 12, "test": 6}  # examples per split of `kdjax_digits`


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
    """`kdjax_digits` and, given an image folder, `kdjax_photos` (its files), prepared in `data_dir`."""
    KdjaxDigits(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    if folder is not None:
        store_image_folder(folder, data_dir, "kdjax_photos")
    return data_dir
