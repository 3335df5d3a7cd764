"""Deterministic weights for a zoo network's `state_dict` keys, made the same way on the PyTorch and JAX sides.

Each entry is drawn from its own generator seeded by the key's CRC32, so the values depend
on the key and shape alone. Scales keep activations of order one through 110 layers in both
modes: He-scaled convs, BatchNorm gains in [0.2, 0.6), running variances in [0.5, 1.5).
"""

from __future__ import annotations

import zlib

import numpy as np

BATCH, SAMPLES = 4, 64  # images per fixture batch; gradient entries stored per parameter


def value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros((), np.int64)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "running_mean" or leaf == "bias":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:  # a BatchNorm gain
        return rng.uniform(0.2, 0.6, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)).astype(np.float32)


def state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    return {key: value(key, tuple(shape)) for key, shape in shapes.items()}


def images(name: str) -> np.ndarray:
    """`[BATCH, 3, 32, 32]` float32 (NCHW), labels `[BATCH]`."""
    rng = np.random.default_rng(zlib.crc32(f"images/{name}".encode()))
    return rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32), rng.integers(0, 100, BATCH)


def sample(flat: np.ndarray) -> np.ndarray:
    """The entries of a flattened array a fixture keeps: evenly spaced, `SAMPLES` at most."""
    flat = np.ravel(flat)
    return flat[np.linspace(0, flat.size - 1, min(SAMPLES, flat.size)).astype(int)]
