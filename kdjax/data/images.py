"""Image files in ImageNet's folder layout, decoded and transformed on the host as torchvision does it.

`image_folder(root)` finds `root/<class>/<image>` (classes in sorted order, as torchvision's
`ImageFolder`); `labelled_files(folder, label_file, classes)` reads a flat validation folder
whose labels come from a file. `ImageFiles` holds the paths and decodes on demand (`HostImages`,
which records of a tfds data set share: `kdjax.data.records`): a training view
(`RandomResizedCrop(size)` + `RandomHorizontalFlip()`) drawn from a per-example seed, or the
evaluation view (`Resize(resize)` + `CenterCrop(size)`), each `[size, size, 3]` uint8, pixel for
pixel the PIL operations torchvision's transforms run (bilinear, its crop arithmetic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kdjax.data.dataset import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults: the crop's share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and its width / height


class ImageFileError(ValueError):
    """An image folder, label file or image that cannot be read as one; the message names the file."""


def _images_in(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None
                 ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """`(paths, labels [n] int32, classes)` of `root/<class>/**/<image>`: one class per sub-folder, sorted.

    `classes` fixes the class list (a validation folder takes the training folder's); a folder
    with no class sub-folders, a class folder without images, or a folder not in `classes` is
    refused in one line naming it.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise ImageFileError(f"image folder {root} does not exist")
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not found:
        raise ImageFileError(f"{root} has no class folders: it must hold one folder of images per class "
                             "(ImageNet's train/<class>/*.JPEG)")
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ImageFileError(f"{root}: class folder {unknown[0]!r} is not among the {len(classes)} training "
                                 "classes; remove it or train with it")
    classes = tuple(found if classes is None else classes)
    paths, labels = [], []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        images = _images_in(root / name)
        if not images:
            raise ImageFileError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                 "remove it or add its images")
        paths += map(str, images)
        labels += [label] * len(images)
    return paths, np.asarray(labels, np.int32), classes


def labelled_files(folder: str | os.PathLike, label_file: str | os.PathLike, classes: Sequence[str]
                   ) -> tuple[list[str], np.ndarray]:
    """`(paths, labels)` of a flat folder of images whose labels come from `label_file`.

    Each line of `label_file` is `<image file name> <class>`, the class being a name from
    `classes` or its index; blank lines and `#` comments are skipped. A line naming a missing
    image or an unknown class is refused in one line naming it.
    """
    folder, label_file = pathlib.Path(folder).expanduser(), pathlib.Path(label_file).expanduser()
    if not label_file.is_file():
        raise ImageFileError(f"label file {label_file} does not exist")
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for number, line in enumerate(label_file.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise ImageFileError(f"{label_file}:{number}: expected '<image file> <class>', got {line!r}")
        name, label = parts
        if label in index:
            label = index[label]
        elif label.isdigit() and int(label) < len(classes):
            label = int(label)
        else:
            raise ImageFileError(f"{label_file}:{number}: class {label!r} is neither one of the {len(classes)} "
                                 "class names nor an index below their count")
        path = folder / name
        if not path.is_file():
            raise ImageFileError(f"{label_file}:{number}: names {name}, which is not in {folder}")
        paths.append(str(path))
        labels.append(label)
    if not paths:
        raise ImageFileError(f"label file {label_file} names no images")
    return paths, np.asarray(labels, np.int32)


def random_resized_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE,
                       ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """`(top, left, height, width)` of a crop as torchvision's `RandomResizedCrop.get_params` draws it: ten tries
    at a random area and log-uniform aspect ratio, then the whole image's centre at the ratio clamped."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    """The `(top, left, height, width)` crop of a PIL image resized to `[size, size, 3]` uint8 (bilinear, as
    torchvision's `resized_crop` on PIL images), mirrored left-right if `flip`."""
    from PIL import Image

    top, left, height, width = box
    image = image.crop((left, top, left + width, top + height)).resize((size, size), Image.BILINEAR)
    return np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image, np.uint8)


def train_view(image, size: int, rng: np.random.Generator) -> np.ndarray:
    """`RandomResizedCrop(size)` then `RandomHorizontalFlip()` of a PIL RGB image: `[size, size, 3]` uint8."""
    box = random_resized_box(image.width, image.height, rng)
    return resized_crop(image, box, size, rng.uniform() < 0.5)


def eval_view(image, size: int, resize: int) -> np.ndarray:
    """`Resize(resize)` (the shorter side to `resize`) then `CenterCrop(size)` of a PIL RGB image."""
    from PIL import Image

    width, height = image.size
    if width <= height:
        shape = (resize, int(resize * height / width))
    else:
        shape = (int(resize * width / height), resize)
    image = image.resize(shape, Image.BILINEAR)
    top, left = int(round((shape[1] - size) / 2.0)), int(round((shape[0] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def decode(file, name: str):
    """The image in `file` (a path or a binary file object) as PIL RGB, fully read; `ImageFileError` naming it
    (`name`) if it cannot be."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            return image.convert("RGB")  # convert() loads every pixel: a truncated file fails here, not later
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise ImageFileError(f"{name}: cannot decode this image ({error}); replace or delete it, or skip such files "
                             "(skip_unreadable=True, --skip-bad-images)") from None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class HostImages:
    """Images `[n, size, size, 3]` uint8 decoded on the host when read (never all at once): the base of image
    files (`ImageFiles`) and of images stored in records (`kdjax.data.records.RecordImages`).

    `random_crop`: the training view, drawn per example from the seeds `read` is given; else the
    evaluation view. With `skip_unreadable`, an image that cannot be decoded reads as black and is
    reported absent by `read` (the engine gives it no weight and counts it); without, it raises
    `ImageFileError`. A subclass says how many images it holds, how a slice of them is cut and where
    each one's encoded bytes are (`_encoded`).
    """

    size: int = 224
    resize: int = 256  # the evaluation view's shorter side before the centre crop
    random_crop: bool = False
    skip_unreadable: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.size <= self.resize:
            raise ValueError(f"image size must be positive and at most the resize ({self.resize}), got {self.size}")

    def __len__(self) -> int:
        raise NotImplementedError

    def _cut(self, which: slice) -> "HostImages":
        raise NotImplementedError

    def _encoded(self, indices: np.ndarray) -> list[tuple[object, str]]:
        """`(file, name)` per index: a path or binary file object PIL opens, and how an error names it."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __getitem__(self, which) -> "HostImages | np.ndarray":
        """A slice: the same view of those images. Indices: their images, decoded (the evaluation view)."""
        if isinstance(which, slice):
            return self._cut(which)
        return self.read(np.atleast_1d(np.asarray(which)))[0].reshape(np.shape(which) + self.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self.read(np.arange(len(self)))[0]
        return images if dtype is None else images.astype(dtype)

    def read(self, indices: np.ndarray, seeds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(images [k, size, size, 3] uint8, readable [k] bool)` at `indices`; the training view draws example
        i's crop and flip from `seeds[i]` (any integers), which it needs."""
        if self.random_crop and seeds is None:
            raise ValueError("the training view draws its crops from per-example seeds: pass seeds")
        images = np.zeros((len(indices), *self.shape[1:]), np.uint8)
        readable = np.ones(len(indices), bool)
        for row, (file, name) in enumerate(self._encoded(indices)):
            try:
                image = decode(file, name)
            except ImageFileError:
                if not self.skip_unreadable:
                    raise
                readable[row] = False
                continue
            images[row] = (train_view(image, self.size, np.random.default_rng(seeds[row])) if self.random_crop
                           else eval_view(image, self.size, self.resize))
        return images, readable


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ImageFiles(HostImages):
    """Images decoded from the files at `paths` (`HostImages`)."""

    paths: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "paths", tuple(map(str, self.paths)))

    def __len__(self) -> int:
        return len(self.paths)

    def _cut(self, which: slice) -> "ImageFiles":
        return dataclasses.replace(self, paths=self.paths[which])

    def _encoded(self, indices: np.ndarray) -> list[tuple[object, str]]:
        return [(self.paths[int(i)],) * 2 for i in indices]

    def fingerprint(self) -> str:
        """SHA-256 of the paths and file sizes: names the files without reading them all."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(f"{path}\0{os.path.getsize(path)}\n".encode())
        return digest.hexdigest()


def evaluation_resize(size: int) -> int:
    """The shorter side the evaluation view resizes to before its centre crop of `size`: 256 at 224, scaled."""
    return int(round(size * 256 / 224))


VALIDATION_FOLDERS = ("val", "validation", "test")
LABEL_FILES = ("val_labels.txt", "validation_labels.txt", "test_labels.txt")


def folder_files(root: str | os.PathLike) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray],
                                                    tuple[str, ...]]:
    """`((train paths, labels), (validation paths, labels), classes)` of an image folder in ImageNet's layout
    (`load_image_folder`'s), checked as it describes."""
    from kdjax.data.dataset import DataNotFoundError

    root = pathlib.Path(root).expanduser()
    if not (root / "train").is_dir():
        raise DataNotFoundError(f"{root} has no train/ folder: an image folder data set holds train/<class>/<image> "
                                "and val/<class>/<image> (or val/ beside val_labels.txt)")
    paths, labels, classes = image_folder(root / "train")
    validation = next((root / v for v in VALIDATION_FOLDERS if (root / v).is_dir()), None)
    if validation is None:
        raise DataNotFoundError(f"{root} has no validation folder ({', '.join(VALIDATION_FOLDERS)})")
    label_file = next((root / f for f in LABEL_FILES if (root / f).is_file()), None)
    if label_file is not None:
        held_out = labelled_files(validation, label_file, classes)
    else:
        held_out = image_folder(validation, classes)[:2]
    return (paths, labels), held_out, classes


def load_image_folder(root: str | os.PathLike, *, size: int = 224, skip_unreadable: bool = False,
                      name: str = "imagefolder") -> "Dataset":
    """A data set of image files in ImageNet's layout: `root/train/<class>/*` and a validation folder,
    `root/val/<class>/*` (labels by folder) or a flat `root/val/` beside `root/val_labels.txt`
    (`<file name> <class name or index>` per line; `validation`/`test` spellings too).

    Training images are read as `RandomResizedCrop(size)` + flip, validation ones as
    `Resize(size * 256 / 224)` + `CenterCrop(size)` (torchvision's ImageNet recipe at 224).
    """
    import time

    from kdjax.data.dataset import Dataset
    from kdjax.data.formats import Split

    start = time.perf_counter()
    (paths, labels), (test_paths, test_labels), classes = folder_files(root)
    view = {"size": size, "resize": evaluation_resize(size), "skip_unreadable": skip_unreadable}
    train = Split(ImageFiles(paths=tuple(paths), random_crop=True, **view), labels)
    test = Split(ImageFiles(paths=tuple(test_paths), **view), test_labels)
    return Dataset(train, test, f"{name} {pathlib.Path(root).expanduser()}", time.perf_counter() - start,
                   len(classes), name)
