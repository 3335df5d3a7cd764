"""Per-channel input normalisation: the named statistics, a data set's own, and which one a run uses.

Images are scaled to [0, 1] first (uint8 pixels / 255; float images are taken as given),
then standardised per channel: `(x - mean) / std`, as torchvision's `ToTensor()` then
`Normalize(mean, std)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel, on [0, 1] pixels

# The tutorial's transforms.Normalize: ImageNet's per-channel mean and std, RGB.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TUTORIAL_NORMALIZATION: Normalization = (MEAN, STD)
# The statistics released CIFAR teachers were trained with: CIFAR-10's training split (torchdistill's and most
# CIFAR-10 repositories' values) and CIFAR-100's (RepDistiller's and mdistiller's `get_cifar100_dataloaders`).
NAMED: dict[str, Normalization] = {
    "imagenet": TUTORIAL_NORMALIZATION,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGE_FOLDERS = ("imagefolder", "imagenet")  # `--dataset NAME:DIR` spellings of an image folder
CHOICES = ("auto", *NAMED, "dataset", "subset", "none")
HELP = ("per-channel normalisation of [0, 1] pixels (uint8 / 255; float images as given): imagenet (the tutorial's "
        "mean and std), cifar10 (mean 0.4914, 0.4822, 0.4465, std 0.2470, 0.2435, 0.2616) or cifar100 (0.5071, "
        "0.4867, 0.4408 and 0.2675, 0.2565, 0.2761: what released CIFAR teachers were trained with), dataset (the "
        "whole training split's own statistics), subset (those of the --train-size images alone), none; auto: "
        "with --teacher-weights the teacher's own (cifar10 / cifar100 for the zoo, imagenet for the tutorial's "
        "networks), else imagenet for CIFAR-10 and images decoded as read (image folders, tfds images of many "
        "shapes), none for float images, dataset otherwise")


class NormalizationError(ValueError):
    """A normalisation that cannot apply to these images; the message says which one can."""


def normalize(images: jax.Array, normalization: Normalization = TUTORIAL_NORMALIZATION) -> jax.Array:
    """Images `[..., c]` -> float32 `(x - mean) / std`, x being uint8 pixels / 255 or float images as given."""
    mean, std = normalization
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def channel_statistics(images: np.ndarray, chunk: int = 4096) -> Normalization:
    """Per-channel mean and (population) std of images `[n, ..., c]` (uint8 pixels / 255, or floats as given),
    summed in float64.

    The statistics a recipe normalises with when it asks for the data set's own (CIFAR-10's
    training split: about (0.491, 0.482, 0.447) and (0.247, 0.243, 0.262)).
    """
    images = np.asarray(images)
    if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)) or images.ndim < 2 \
            or not len(images):
        raise ValueError(f"channel_statistics takes uint8 or float [n, ..., channels] with n > 0, got "
                         f"{images.dtype} {images.shape}")
    channels, scale = images.shape[-1], 255.0 if images.dtype == np.uint8 else 1.0
    total, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].reshape(-1, channels).astype(np.float64) / scale
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    if (std == 0).any():
        raise NormalizationError(f"channel(s) {', '.join(map(str, np.flatnonzero(std == 0)))} of the training "
                                 "images are constant: their std is 0, so --normalize dataset cannot divide by it; "
                                 "use --normalize none")
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def choose(choice: str, *, dataset: str, train_images: np.ndarray, used_images: np.ndarray,
           teacher_trained_with: str | None = None) -> tuple[Normalization, str]:
    """The (mean, std) a run normalises with, and a line for the log saying where it comes from.

    Args:
      choice: one of `CHOICES`.
      dataset: the data set's name (`cifar10`, `cifar100`, ...).
      train_images: the whole training split `[n, h, w, c]` (`dataset` statistics).
      used_images: the training images the run uses, e.g. a `--train-size` subset (`subset` statistics).
      teacher_trained_with: the named normalisation a released teacher expects (`auto` picks it), if known.

    Raises:
      NormalizationError: a named normalisation for float images outside [0, 1], or a channel count it lacks.
    """
    if choice not in CHOICES:
        raise NormalizationError(f"normalisation must be one of {', '.join(CHOICES)}, got {choice!r}")
    floats = np.issubdtype(train_images.dtype, np.floating)
    channels = train_images.shape[-1]
    if choice == "auto":
        if teacher_trained_with is not None:
            choice = teacher_trained_with
        elif floats:
            choice = "none"
        else:
            choice = "imagenet" if dataset == "cifar10" or not isinstance(train_images, np.ndarray) else "dataset"
    if choice == "none":
        return ((0.0,) * channels, (1.0,) * channels), "normalization: none (the images as given)"
    if choice in ("dataset", "subset"):
        if not isinstance(train_images, np.ndarray):
            raise NormalizationError(f"--normalize {choice} would decode every image file to measure it: use imagenet "
                                     "(ImageNet's statistics) or none")
        images = train_images if choice == "dataset" else used_images
        statistics = channel_statistics(images)
        which = "training split's" if choice == "dataset" else f"{len(images):,} training images'"
        return statistics, f"normalization: the {which} mean {statistics[0]}, std {statistics[1]}"
    statistics = NAMED[choice]
    if len(statistics[0]) != channels:
        raise NormalizationError(f"--normalize {choice} is for 3-channel images, these have {channels}: use "
                                 "--normalize dataset or none")
    if floats:
        low, high = float(np.min(train_images)), float(np.max(train_images))
        if low < 0.0 or high > 1.0:
            raise NormalizationError(f"--normalize {choice} is for [0, 1] pixels, but the float training images "
                                     f"span [{low:.4g}, {high:.4g}]: use --normalize none (already normalised) or "
                                     "dataset")
    return statistics, f"normalization: {choice}, mean {statistics[0]}, std {statistics[1]}"
