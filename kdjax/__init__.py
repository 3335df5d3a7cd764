"""kdjax: knowledge distillation in functional JAX.

`kdjax.losses` (pure distillation losses), `kdjax.features` (read any Flax model's
intermediates by path), `kdjax.methods` (distillation methods as data), `kdjax.network`,
`kdjax.train` and `kdjax.engine` (the engine: N members on a device mesh), and the PyTorch
Knowledge Distillation Tutorial's networks in `kdjax.zoo.tutorial`. Importing kdjax loads
nothing but itself and changes no global state; submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_SUBMODULES = ("checkpoint", "config", "convert", "cpu", "data", "distill", "engine", "features", "fields", "identity",
               "losses", "methods", "network", "optimizers", "parallel", "plots", "recipes", "released", "report", "run",
               "stats", "tables", "tasks", "teacher", "train", "zoo")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"kdjax.{name}")
    raise AttributeError(f"module 'kdjax' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
