"""Deterministic weights and inputs shared by `make_reference.py` and the parity tests.

The fixture stays small by storing a seed and a SHA-256 of these arrays instead of the
arrays themselves (the teacher alone is 4.7 MB of float32). Everything is drawn from
numpy's PCG64 `Generator.random`, whose stream numpy keeps stable across releases; the
stored hashes catch any drift.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED = 20240612
BATCH = 8
STEPS = 3

TEACHER_SHAPES = {
    "features.0.weight": (128, 3, 3, 3), "features.0.bias": (128,),
    "features.2.weight": (64, 128, 3, 3), "features.2.bias": (64,),
    "features.5.weight": (64, 64, 3, 3), "features.5.bias": (64,),
    "features.7.weight": (32, 64, 3, 3), "features.7.bias": (32,),
    "classifier.0.weight": (512, 2048), "classifier.0.bias": (512,),
    "classifier.3.weight": (10, 512), "classifier.3.bias": (10,),
}
STUDENT_SHAPES = {
    "features.0.weight": (16, 3, 3, 3), "features.0.bias": (16,),
    "features.3.weight": (16, 16, 3, 3), "features.3.bias": (16,),
    "classifier.0.weight": (256, 1024), "classifier.0.bias": (256,),
    "classifier.3.weight": (10, 256), "classifier.3.bias": (10,),
}
REGRESSOR_SHAPES = {"regressor.0.weight": (32, 16, 3, 3), "regressor.0.bias": (32,)}


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float) -> np.ndarray:
    return ((rng.random(shape) * 2.0 - 1.0) * bound).astype(np.float32)


def _state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """PyTorch's default init distribution, U(+-1/sqrt(fan_in)), drawn with numpy."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        weight_shape = shapes[name.replace("bias", "weight")]
        fan_in = int(np.prod(weight_shape[1:]))
        state[name] = _uniform(rng, shape, 1.0 / np.sqrt(fan_in))
    return state


def teacher_state_dict() -> dict[str, np.ndarray]:
    return _state_dict(TEACHER_SHAPES, SEED)


def student_state_dict() -> dict[str, np.ndarray]:
    return _state_dict(STUDENT_SHAPES, SEED + 1)


def regressor_state_dict() -> dict[str, np.ndarray]:
    return _state_dict(REGRESSOR_SHAPES, SEED + 2)


def batches() -> tuple[np.ndarray, np.ndarray]:
    """`STEPS` batches: images `[STEPS, BATCH, 3, 32, 32]` (NCHW, roughly normalised), labels `[STEPS, BATCH]`."""
    rng = np.random.default_rng(SEED + 3)
    images = (rng.random((STEPS, BATCH, 3, 32, 32)) * 4.0 - 2.0).astype(np.float32)
    labels = rng.integers(0, 10, size=(STEPS, BATCH)).astype(np.int64)
    return images, labels


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()
