"""A Flax model as the engine sees it: initialise from a key, run, read named outputs.

A `Network` wraps a `flax.linen` module (`linen_network`) or an `flax.nnx` model factory
(`nnx_network`) behind two pure functions, `init(key) -> params` and
`forward(params, images, *, train, key, roles) -> (logits, {role: array})`. A role is a
name a distillation method reads (`"feature_map"`); the network maps it to a module path
of its model, read with `kdjax.features.capture`, so any model can be distilled without
editing it. The tutorial's networks are `tutorial_teacher()` and `tutorial_student()`.

The engine trains the `params` collection only: models whose forward pass updates other
state (BatchNorm's running statistics) are not supported yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from kdjax import features as features_lib
from kdjax.models import IMAGE_SHAPE, DeepNN, LightNN

Params = Any
Forward = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A model the engine can train or distil from.

    Attributes:
      name: shown in logs and checkpoints (e.g. `"DeepNN"`).
      input_shape: one example's shape, e.g. `(32, 32, 3)`.
      roles: role name -> module path whose output that role reads.
      init: `key -> params`, the trainable parameters.
      apply: `(params, images, train, key, paths) -> (model output, {path: array})`.
      logits: model output -> logits `[batch, classes]`.
    """

    name: str
    input_shape: tuple[int, ...]
    roles: Mapping[str, str]
    init: Callable[[jax.Array], Params]
    apply: Callable[..., tuple[Any, dict[str, jax.Array]]]
    logits: Callable[[Any], jax.Array]

    def forward(self, params: Params, images: jax.Array, *, train: bool, key: jax.Array | None = None,
                roles: Sequence[str] = ()) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(logits, {role: output})` for `images` `[batch, *input_shape]`; `key` drives dropout when `train`."""
        missing = [role for role in roles if role not in self.roles]
        if missing:
            raise ValueError(f"{self.name} has no output for {missing}: give the network roles={{{missing[0]!r}: "
                             f"'<module path>'}} (it has {dict(self.roles) or 'none'})")
        paths = [self.roles[role] for role in roles]
        output, captured = self.apply(params, images, train, key, paths)
        return self.logits(output), {role: captured[self.roles[role]] for role in roles}

    def output_shapes(self, roles: Sequence[str], batch: int = 2) -> dict[str, tuple[int, ...]]:
        """Shapes of `forward`'s logits (under `"logits"`) and `roles` for a batch of `batch`, abstractly."""
        def run(key):
            logits, outs = self.forward(self.init(key), jnp.zeros((batch, *self.input_shape)), train=False,
                                        roles=roles)
            return {"logits": logits, **outs}

        return {name: tuple(a.shape) for name, a in jax.eval_shape(run, jax.random.key(0)).items()}


def linen_network(module: nn.Module, *, input_shape: Sequence[int], roles: Mapping[str, str] | None = None,
                  logits: Callable[[Any], jax.Array] | None = None, train_argument: str | None = "train",
                  name: str | None = None) -> Network:
    """A `flax.linen` module as a `Network`.

    Args:
      module: called as `module.apply({"params": p}, images, train=..., rngs={"dropout": key})`.
      input_shape: one example's shape.
      roles: role -> submodule path (see `kdjax.features`).
      logits: picks the logits out of the module's output (default: the output itself).
      train_argument: the keyword that switches training mode (dropout), or None if there is none.
    """
    def init(key: jax.Array) -> Params:
        kwargs = {train_argument: False} if train_argument else {}
        return module.init(key, jnp.zeros((1, *input_shape), jnp.float32), **kwargs)["params"]

    def apply(params, images, train, key, paths):
        kwargs = {train_argument: train} if train_argument else {}
        if train and key is not None:
            kwargs["rngs"] = {"dropout": key}
        return features_lib.capture(module, {"params": params}, images, paths=paths, **kwargs)

    return Network(name or type(module).__name__, tuple(input_shape), dict(roles or {}), init, apply,
                   logits or (lambda output: output))


def nnx_network(factory: Callable[[nnx.Rngs], nnx.Module], *, input_shape: Sequence[int],
                roles: Mapping[str, str] | None = None, logits: Callable[[Any], jax.Array] | None = None,
                name: str | None = None) -> Network:
    """An `flax.nnx` model as a `Network`: `factory(nnx.Rngs(key))` builds it.

    Its `nnx.Param`s are trained; the rest of its state (RNG streams) is rebuilt from the key
    on every call. Training mode is `model.train()` with the `dropout` stream reseeded from
    the step's key; inference is `model.eval()`.
    """
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(0))), nnx.Param, ...)

    def init(key: jax.Array) -> Params:
        return nnx.state(factory(nnx.Rngs(key)), nnx.Param)

    def apply(params, images, train, key, paths):
        rest = nnx.split(factory(nnx.Rngs(0 if key is None else key)), nnx.Param, ...)[2]
        model = nnx.merge(graphdef, params, rest)
        if train:
            model.train()
        else:
            model.eval()
        return features_lib.capture(model, images, paths=paths)

    built_name = name or type(nnx.eval_shape(lambda: factory(nnx.Rngs(0)))).__name__
    return Network(built_name, tuple(input_shape), dict(roles or {}), init, apply,
                   logits or (lambda output: output))


def _tutorial(module: nn.Module, feature_map: str) -> Network:
    return linen_network(module, input_shape=IMAGE_SHAPE, roles={"feature_map": feature_map},
                         logits=lambda output: output.logits)


def tutorial_teacher(**model_kwargs: Any) -> Network:
    """`DeepNN(**model_kwargs)`; role `feature_map` is its last pool, `[batch, 8, 8, 32]`."""
    return _tutorial(DeepNN(**model_kwargs), "features_9")


def tutorial_student(**model_kwargs: Any) -> Network:
    """`LightNN(**model_kwargs)`; role `feature_map` is its last pool, `[batch, 8, 8, 16]`."""
    return _tutorial(LightNN(**model_kwargs), "features_5")
