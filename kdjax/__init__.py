"""kdjax: knowledge distillation in functional JAX.

`kdjax.losses` (pure distillation losses), `kdjax.features` (read any Flax model's
intermediates by path), `kdjax.methods` (distillation methods as data), `kdjax.network`,
`kdjax.train` and `kdjax.engine` (the engine: N members on a device mesh), the PyTorch
Knowledge Distillation Tutorial's networks and the field's in `kdjax.zoo`, and Hugging Face
checkpoints in and out (`kdjax.hf`). Importing kdjax loads
nothing but itself and changes no global state; submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_SUBMODULES = ("atomic", "checkpoint", "config", "convert", "cpu", "data", "distill", "engine", "features", "fields",
               "hf", "identity", "losses", "methods", "network", "offline", "on_policy", "optimizers", "parallel",
               "plots", "recipes", "released", "report", "run", "sampling", "stats", "tables", "tasks", "teacher",
               "train", "zoo")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"kdjax.{name}")
    raise AttributeError(f"module 'kdjax' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
