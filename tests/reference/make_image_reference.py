"""Writes `image_transforms.npz`: torchvision's ImageNet views of five images, for `tests/test_stream.py`.

Run with torch and torchvision installed (`pip install -e ".[reference]" torchvision`):
`python tests/reference/make_image_reference.py`. For each image: `Resize(RESIZE)` + `CenterCrop(CROP)`
(`eval{i}`), and `resized_crop(CROP)` at a box drawn by `RandomResizedCrop.get_params` (torch seed i), mirrored
when the box's flip flag is set (`train{i}`); `boxes` holds (top, left, height, width, flip).
"""

import pathlib

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional

SIZES = ((120, 160), (160, 107), (64, 300), (90, 90), (300, 64))  # (height, width): wide, tall, strips, square
CROP, RESIZE = 64, 73  # ImageNet's 224 and 256 scaled down (73 = round(64 * 256 / 224)): a small file


def image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour gradients plus faint noise: edges and texture for the filters, small once compressed."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(0)
    out, boxes = {"sizes": np.array(SIZES)}, []
    evaluation = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP)])
    for i, (height, width) in enumerate(SIZES):
        pixels = image(height, width, rng)
        picture = Image.fromarray(pixels)
        torch.manual_seed(i)
        top, left, h, w = transforms.RandomResizedCrop.get_params(picture, (0.08, 1.0), (3 / 4, 4 / 3))
        flip = i % 2
        crop = functional.resized_crop(picture, top, left, h, w, [CROP, CROP],
                                       transforms.InterpolationMode.BILINEAR, antialias=True)
        out[f"image{i}"] = pixels
        out[f"eval{i}"] = np.asarray(evaluation(picture))
        out[f"train{i}"] = np.asarray(functional.hflip(crop) if flip else crop)
        boxes.append((top, left, h, w, flip))
    out["boxes"] = np.array(boxes)
    np.savez_compressed(pathlib.Path(__file__).parent / "image_transforms.npz", **out)


if __name__ == "__main__":
    main()
