"""Move weights between the tutorial's PyTorch models and kdjax's Flax models.

PyTorch names `features.0.weight` map to Flax `params["features_0"]["kernel"]`; conv
weights go OIHW -> HWIO and linear weights are transposed. Torch is never imported: a
`torch.load`ed state_dict works because tensors are converted through their own
`.detach().cpu().numpy()`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models import IMAGE_SHAPE, DeepNN, LightNN

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
