"""Move weights between PyTorch models and kdjax's Flax models: the tutorial's and the zoo's.

PyTorch names `features.0.weight` map to Flax `params["features_0"]["kernel"]`; conv
weights go OIHW -> HWIO and linear weights are transposed. For the zoo (`zoo_from_torch`,
`zoo_to_torch`) BatchNorm's `weight` is `scale` and its `running_mean` / `running_var` go to
the `batch_stats` collection, so a benchmark's released checkpoint loads whole. Torch is never imported: a
`torch.load`ed state_dict works because tensors are converted through their own
`.detach().cpu().numpy()`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.zoo.tutorial import IMAGE_SHAPE, DeepNN, LightNN

_TEACHER_LAYERS = ("features.0", "features.2", "features.5", "features.7", "classifier.0", "classifier.3")
_STUDENT_LAYERS = ("features.0", "features.3", "classifier.0", "classifier.3")
_REGRESSOR_LAYER = "regressor.0"


def _flax_path(torch_layer: str) -> tuple[str, ...]:
    """`features.0` -> (`features_0`,); `regressor.0` -> (`regressor`, `regressor_0`)."""
    flat = torch_layer.replace(".", "_")
    return ("regressor", flat) if torch_layer == _REGRESSOR_LAYER else (flat,)


def model_for_state_dict(state_dict: Mapping[str, Any]) -> DeepNN | LightNN:
    """The kdjax model whose parameters a tutorial state_dict holds."""
    layers = {name.rsplit(".", 1)[0] for name in state_dict}
    if layers == set(_TEACHER_LAYERS):
        return DeepNN()
    if layers == set(_STUDENT_LAYERS):
        return LightNN()
    if layers == set(_STUDENT_LAYERS) | {_REGRESSOR_LAYER}:
        return LightNN(hint=True)
    raise ValueError(
        "state_dict matches none of the tutorial's models (DeepNN, LightNN, "
        f"ModifiedLightNNRegressor); its layers are {sorted(layers)}"
    )


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, possibly on GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


# Axis orders: conv HWIO <-> OIHW, dense [in, out] <-> [out, in], bias unchanged.
_TO_TORCH = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}
_FROM_TORCH = {4: (2, 3, 1, 0), 2: (1, 0), 1: (0,)}


def _torch_layout(flax_array: np.ndarray) -> np.ndarray:
    return flax_array.transpose(_TO_TORCH[flax_array.ndim])


def from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables `{"params": ...}` for the model `model_for_state_dict` names.

    Args:
      state_dict: tutorial parameter names -> numpy arrays or torch tensors, in PyTorch
        layouts (conv OIHW, linear `[out, in]`).

    Raises:
      ValueError: on unknown, missing or wrongly shaped parameters.
    """
    model = model_for_state_dict(state_dict)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    params: dict[str, Any] = {}
    for layer in {name.rsplit(".", 1)[0] for name in state_dict}:
        path = _flax_path(layer)
        target = expected
        for part in path:
            target = target[part]
        for torch_kind, flax_kind in (("weight", "kernel"), ("bias", "bias")):
            name = f"{layer}.{torch_kind}"
            if name not in state_dict:
                raise ValueError(f"state_dict lacks {name!r}")
            array = _to_numpy(state_dict[name])
            flax_shape = target[flax_kind].shape
            want = tuple(flax_shape[axis] for axis in _TO_TORCH[len(flax_shape)])
            if array.shape != want:
                raise ValueError(f"{name!r} has shape {array.shape}; {type(model).__name__} needs {want}")
            node = params
            for part in path:
                node = node.setdefault(part, {})
            node[flax_kind] = jnp.asarray(array.transpose(_FROM_TORCH[array.ndim]))
    return {"params": params}


def to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of `from_torch`: tutorial parameter names -> numpy arrays in PyTorch layout."""
    params = variables.get("params", variables)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [entry.key for entry in path]
        layer = keys[-2].replace("_", ".")
        kind = {"kernel": "weight", "bias": "bias"}[keys[-1]]
        flat[f"{layer}.{kind}"] = _torch_layout(np.asarray(leaf))
    return flat


_NUMBERED = re.compile(r"\.(\d+)(?=\.|$)")  # `layer1.0.conv1` -> `layer1_0.conv1`
_FLAX_NUMBERED = re.compile(r"_(\d+)(?=_|$)")
_BATCH_STATS = {"running_mean": "mean", "running_var": "var"}


def _zoo_path(key: str) -> tuple[str, tuple[str, ...], str]:
    """A PyTorch `state_dict` key -> (Flax collection, module path, leaf kind in PyTorch's terms)."""
    module, _, leaf = _NUMBERED.sub(r"_\1", key).rpartition(".")
    return ("batch_stats" if leaf in _BATCH_STATS else "params"), tuple(module.split(".")), leaf


def zoo_from_torch(name: str, state_dict: Mapping[str, Any], *, num_classes: int | None = None) -> dict[str, Any]:
    """Flax variables `{"params", "batch_stats"}` of zoo network `name` from its PyTorch `state_dict`.

    Takes what `torch.save(model.state_dict())` wrote for the benchmarks' definitions
    (RepDistiller, mdistiller), also with `nn.DataParallel`'s `module.` prefix; the class count
    is read from the head unless given. `num_batches_tracked` is dropped.

    Raises:
      ValueError: on unknown, missing or wrongly shaped entries, naming them.
    """
    from kdjax import zoo

    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()
                  if not key.endswith("num_batches_tracked")}
    if num_classes is None:
        heads = [value for key, value in state_dict.items()
                 if key.endswith("weight") and np.ndim(_to_numpy(value)) == 2]
        num_classes = int(_to_numpy(heads[0]).shape[0]) if len(heads) == 1 else 10  # the zoo's one Linear
    module = zoo.module(name, num_classes=num_classes)
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
    expected_keys = zoo_to_torch(expected, shapes_only=True)
    unknown, missing = sorted(set(state_dict) - set(expected_keys)), sorted(set(expected_keys) - set(state_dict))
    if unknown or missing:
        raise ValueError(f"state_dict does not match {name} ({num_classes} classes): "
                         f"unknown {unknown[:5] or 'none'}, missing {missing[:5] or 'none'}")
    variables: dict[str, Any] = {}
    for key, value in state_dict.items():
        array = _to_numpy(value)
        if array.shape != expected_keys[key]:
            raise ValueError(f"{key!r} has shape {array.shape}; {name} needs {expected_keys[key]}")
        collection, path, leaf = _zoo_path(key)
        node = variables.setdefault(collection, {})
        for part in path:
            node = node.setdefault(part, {})
        if leaf in _BATCH_STATS:
            node[_BATCH_STATS[leaf]] = jnp.asarray(array)
        elif leaf == "weight" and array.ndim == 1:
            node["scale"] = jnp.asarray(array)
        else:
            node["kernel" if leaf == "weight" else leaf] = jnp.asarray(array.transpose(_FROM_TORCH[array.ndim]))
    return variables


def zoo_to_torch(variables: Mapping[str, Any], *, shapes_only: bool = False) -> dict[str, Any]:
    """The inverse of `zoo_from_torch`: PyTorch `state_dict` keys -> numpy arrays in PyTorch layout.

    Each BatchNorm also gets `num_batches_tracked` (0), so that `load_state_dict` takes it
    strictly. With `shapes_only`, the values are the shapes.
    """
    flat: dict[str, Any] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]:
            keys = [entry.key for entry in path]
            module = ".".join(_FLAX_NUMBERED.sub(r".\1", part) for part in keys[:-1])
            kind = keys[-1]
            if collection == "batch_stats":
                name = {"mean": "running_mean", "var": "running_var"}[kind]
                flat[f"{module}.num_batches_tracked"] = () if shapes_only else np.zeros((), np.int64)
            else:
                name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[kind]
            shape = tuple(leaf.shape[axis] for axis in _TO_TORCH[len(leaf.shape)])
            flat[f"{module}.{name}"] = shape if shapes_only else _torch_layout(np.asarray(leaf))
    if shapes_only:
        return {key: shape for key, shape in flat.items() if not key.endswith("num_batches_tracked")}
    return flat


def state_dict(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Network `name`'s Flax variables (`{"params": ..., "batch_stats": ...}`) as a PyTorch `state_dict` of numpy
    arrays: what `--teacher-weights` reads back (`np.savez(FILE, **state_dict(...))`)."""
    from kdjax import zoo

    return to_torch(variables) if name in zoo.TUTORIAL else zoo_to_torch(variables)


def state_dict_shapes(name: str, *, num_classes: int = 10) -> dict[str, tuple[int, ...]]:
    """The PyTorch `state_dict` keys and shapes that network `name` (the tutorial's or the zoo's) loads from:
    what `--teacher-weights` expects. `python -m kdjax.convert NAME [CLASSES]` prints them."""
    from kdjax import zoo

    params, state = zoo.network(name, num_classes=num_classes).init(jax.random.key(0))
    return {key: tuple(np.shape(value)) for key, value in state_dict(name, {"params": params, **state}).items()
            if not key.endswith("num_batches_tracked")}


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m kdjax.convert NETWORK [CLASSES]: the state_dict keys and shapes it loads")
    for key, shape in state_dict_shapes(sys.argv[1], num_classes=int(sys.argv[2]) if len(sys.argv) == 3 else 10
                                        ).items():
        print(key, tuple(shape))
