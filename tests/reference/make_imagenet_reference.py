"""Regenerate `imagenet_reference.npz`: torchvision's ResNet-18/34/50 and mdistiller's MobileNetV1 as
`make_zoo_reference.py` records the CIFAR zoo (float64, deterministic weights, eval and train passes, gradients).

    pip install -e ".[reference]" torchvision && python tests/reference/make_imagenet_reference.py
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import imagenet_torch  # noqa: E402
from make_zoo_reference import write  # noqa: E402

if __name__ == "__main__":
    write(imagenet_torch.NETWORKS, pathlib.Path(__file__).parent / "imagenet_reference.npz")
