"""Read a Flax model's intermediate outputs by module path, without editing the model.

A path is the submodule's name path joined with `/`: `"features_9"`, `"block2/conv1"`, or
`"layers/0"` for the first entry of an NNX `nnx.List`. The array returned for a path is
that submodule's `__call__` output. Works for `flax.linen` (through
`capture_intermediates`) and `flax.nnx` (through `nnx.capture`), inside `jax.jit`,
`jax.grad` and `jax.vmap`; the model's parameters and code are left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import linen as nn
from flax import nnx


class UnknownFeatureError(KeyError):
    """A requested path names no submodule of the model (or one that is never called)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def capture(model: Any, *args: Any, paths: Sequence[str], **apply_kwargs: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Run `model` and return `(output, {path: submodule output})`.

    linen: `capture(module, variables, inputs, *, paths, **apply_kwargs)`, where
    `apply_kwargs` go to `module.apply` (e.g. `train=True, rngs={"dropout": key}`); with
    `mutable=[...]` the output is `(output, updated_collections)` as `apply` returns it.
    NNX: `capture(model, inputs, *, paths, **call_kwargs)`, the model called as
    `model(inputs, **call_kwargs)`.

    Raises:
      UnknownFeatureError: a path the model does not call, with the list of paths it has.
      ValueError: a path whose submodule is called more than once per forward pass.
    """
    paths = tuple(paths)
    if isinstance(model, nn.Module):
        if len(args) != 2:
            raise TypeError("capture(linen_module, variables, inputs, *, paths, **apply_kwargs) takes two "
                            f"positional arguments after the module, got {len(args)}")
        return _capture_linen(model, args[0], args[1], paths, apply_kwargs)
    if isinstance(model, nnx.Module):
        if len(args) != 1:
            raise TypeError(f"capture(nnx_module, inputs, *, paths) takes one positional input, got {len(args)}")
        return _capture_nnx(model, args[0], paths, apply_kwargs)
    raise TypeError(f"capture needs a flax.linen or flax.nnx Module, got {type(model).__name__}")


def _join(parts: Sequence[Any]) -> str:
    return "/".join(str(part) for part in parts)


def _pick(found: Mapping[str, tuple], paths: tuple[str, ...], available: Any) -> dict[str, jax.Array]:
    missing = [path for path in paths if path not in found]
    if missing:
        known = sorted(available())
        raise UnknownFeatureError(
            f"no submodule output at {', '.join(map(repr, missing))}; the model's paths are: {', '.join(known)}")
    picked = {}
    for path in paths:
        calls = found[path]
        if len(calls) != 1:
            raise ValueError(f"submodule {path!r} is called {len(calls)} times per forward pass; capture reads "
                             "a submodule called once (wrap the call you want in a submodule of its own)")
        picked[path] = calls[0]
    return picked


def _capture_linen(module: nn.Module, variables: Any, inputs: Any, paths: tuple[str, ...],
                   apply_kwargs: dict[str, Any]) -> tuple[Any, dict[str, jax.Array]]:
    wanted = set(paths)
    user_mutable = apply_kwargs.pop("mutable", False)
    mutable = ["intermediates"]
    if user_mutable is True:
        mutable = True
    elif user_mutable:
        mutable += [user_mutable] if isinstance(user_mutable, str) else list(user_mutable)

    def keep(mdl: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and _join(mdl.path) in wanted

    output, collections = module.apply(variables, inputs, capture_intermediates=keep, mutable=mutable,
                                       **apply_kwargs)
    collections = dict(collections)
    found = _linen_calls(collections.pop("intermediates", {}))

    def available() -> list[str]:
        def run(v, x):
            return module.apply(v, x, capture_intermediates=True, mutable=mutable, **apply_kwargs)[1]
        return [p for p in _linen_calls(jax.eval_shape(run, variables, inputs)["intermediates"]) if p]

    features = _pick(found, paths, available)
    return ((output, collections) if user_mutable else output), features


def _linen_calls(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, tuple]:
    found = {}
    for name, value in tree.items():
        if name == "__call__":
            found[_join(prefix)] = tuple(value)
        elif isinstance(value, Mapping):
            found.update(_linen_calls(value, (*prefix, name)))
    return found


def _capture_nnx(model: nnx.Module, inputs: Any, paths: tuple[str, ...],
                 call_kwargs: dict[str, Any]) -> tuple[Any, dict[str, jax.Array]]:
    output, state = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(inputs, **call_kwargs)
    found = {}
    for path, value in nnx.to_flat_state(state):
        if path and path[-1] == "__call__":
            found[_join(path[:-1])] = tuple(value.get_value())

    def available() -> list[str]:
        return [_join(path) for path, _ in nnx.iter_modules(model) if path]

    return output, _pick(found, paths, available)


def feature_shapes(model: Any, *args: Any, paths: Sequence[str], **apply_kwargs: Any) -> dict[str, tuple[int, ...]]:
    """The shapes `capture` would return for `paths`, computed abstractly (no FLOPs)."""
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)

        def run(state, *inputs):
            return capture(nnx.merge(graphdef, state), *inputs, paths=paths, **apply_kwargs)[1]

        shapes = jax.eval_shape(run, state, *args)
    else:
        shapes = jax.eval_shape(lambda *a: capture(model, *a, paths=paths, **apply_kwargs)[1], *args)
    return {path: tuple(value.shape) for path, value in shapes.items()}


__all__ = ["UnknownFeatureError", "capture", "feature_shapes"]
