"""The tutorial's networks in `flax.linen`: `DeepNN` (teacher), `LightNN` (student), `Regressor`, and as
engine `Network`s (`tutorial_teacher()`, `tutorial_student()`).

Inputs are NHWC float32 images `[batch, 32, 32, 3]`. Each network returns a `ModelOutput`
that carries, besides the logits, the representations the distillation objectives read:

* `hidden`: the flattened conv features in PyTorch's channel-major (C, H, W) order,
  `[batch, 2048]` for the teacher and `[batch, 1024]` for the student, so that a
  PyTorch `Linear` weight transposes straight onto the first dense kernel.
* `feature_map`: the last conv block's output, NHWC, `[batch, 8, 8, 32]` (teacher) or
  `[batch, 8, 8, 16]` (student).
* `regressed`: for `LightNN(hint=True)`, the `Regressor` applied to `feature_map`,
  `[batch, 8, 8, 32]`; otherwise None.

Submodule names mirror the PyTorch attribute paths (`features_0` is `features.0`), which
keeps `kdjax.convert` a table lookup; the pools are submodules too, so the last feature
map can be read by path (`features_9` in the teacher, `features_5` in the student).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from kdjax.losses.features import flatten_channel_major
from kdjax.network import Network, linen_network
from kdjax.zoo.conv import add_channel_bias, conv_general_dilated
from kdjax.zoo.initializers import torch_bias_init, torch_kernel_init

InitScheme = Literal["torch", "flax"]
IMAGE_SHAPE = (32, 32, 3)


@struct.dataclass
class ModelOutput:
    """What a forward pass returns; see the module docstring for shapes."""

    logits: jax.Array
    hidden: jax.Array
    feature_map: jax.Array
    regressed: jax.Array | None = None


def _initializers(init_scheme: InitScheme, fan_in: int) -> dict:
    if init_scheme == "torch":
        return {"kernel_init": torch_kernel_init, "bias_init": torch_bias_init(fan_in)}
    if init_scheme == "flax":
        return {}
    raise ValueError(f"init_scheme must be 'torch' or 'flax', got {init_scheme!r}")


class Conv3x3(nn.Module):
    """3x3 conv, stride 1, padding 1: `nn.Conv2d(in, out, kernel_size=3, padding=1)` on NHWC.

    Params `kernel` `[3, 3, in, out]` and `bias` `[out]`, laid out and initialised as
    `nn.Conv`'s; `[n, h, w, in] -> [n, h, w, out]`. The kernel and bias gradients take the
    faster CPU forms in `kdjax.zoo.conv`.
    """

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        y = conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return add_channel_bias(y, bias)


def _conv(features: int, in_channels: int, init_scheme: InitScheme, name: str) -> Conv3x3:
    return Conv3x3(features, name=name, **_initializers(init_scheme, in_channels * 9))


def _dense(features: int, in_features: int, init_scheme: InitScheme, name: str) -> nn.Dense:
    return nn.Dense(features, name=name, **_initializers(init_scheme, in_features))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool with stride 2 on NHWC, `[n, h, w, c] -> [n, h/2, w/2, c]`.

    Written as reshape + max rather than `nn.max_pool`: same forward values, and XLA's CPU
    gradient of a reduction is several times faster than its select-and-scatter. The
    gradients differ from PyTorch's only on exact ties inside a window (PyTorch routes the
    whole gradient to the first maximum, this splits it); after a ReLU, ties sit at 0 where
    the incoming gradient is already 0.
    """
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"max_pool_2x2 needs even spatial dims, got {x.shape}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class MaxPool2x2(nn.Module):
    """`max_pool_2x2` as a submodule, so that its output can be read by path (`kdjax.features`)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool_2x2(x)


def _check_images(x: jax.Array) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"expected NHWC images of shape [batch, 32, 32, 3], got {tuple(x.shape)}; "
            "transpose NCHW tensors with x.transpose(0, 2, 3, 1)"
        )


def _classifier(
    hidden: jax.Array, hidden_features: int, num_classes: int, dropout_rate: float,
    init_scheme: InitScheme, train: bool,
) -> jax.Array:
    """`Linear -> ReLU -> Dropout -> Linear`; call only inside a compact `__call__`."""
    x = _dense(hidden_features, hidden.shape[-1], init_scheme, "classifier_0")(hidden)
    x = nn.Dropout(dropout_rate, deterministic=not train)(nn.relu(x))
    return _dense(num_classes, hidden_features, init_scheme, "classifier_3")(x)


class Regressor(nn.Module):
    """FitNets hint regressor: 3x3 conv, padding 1, `[n, 8, 8, 16] -> [n, 8, 8, 32]` (4,640 params)."""

    features: int = 32
    init_scheme: InitScheme = "torch"

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        return _conv(self.features, feature_map.shape[-1], self.init_scheme, "regressor_0")(feature_map)


class DeepNN(nn.Module):
    """The tutorial's teacher (1,186,986 parameters).

    Call with `train=True` and `rngs={"dropout": key}` to apply Dropout(0.1); `train=False`
    is deterministic.
    """

    num_classes: int = 10
    dropout_rate: float = 0.1
    init_scheme: InitScheme = "torch"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        _check_images(images)
        x = images
        for index, features in ((0, 128), (2, 64)):
            x = nn.relu(_conv(features, x.shape[-1], self.init_scheme, f"features_{index}")(x))
        x = MaxPool2x2(name="features_4")(x)
        for index, features in ((5, 64), (7, 32)):
            x = nn.relu(_conv(features, x.shape[-1], self.init_scheme, f"features_{index}")(x))
        feature_map = MaxPool2x2(name="features_9")(x)
        hidden = flatten_channel_major(feature_map)
        logits = _classifier(
            hidden, 512, self.num_classes, self.dropout_rate, self.init_scheme, train
        )
        return ModelOutput(logits=logits, hidden=hidden, feature_map=feature_map)


class LightNN(nn.Module):
    """The tutorial's student (267,738 parameters; 272,378 with `hint=True`).

    With `hint=True` it also carries the FitNets `Regressor` (the tutorial's
    `ModifiedLightNNRegressor`) and fills `ModelOutput.regressed`. The student's own
    parameters do not depend on `hint`: the same key initialises them identically.
    """

    num_classes: int = 10
    dropout_rate: float = 0.1
    init_scheme: InitScheme = "torch"
    hint: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> ModelOutput:
        _check_images(images)
        x = nn.relu(_conv(16, 3, self.init_scheme, "features_0")(images))
        x = MaxPool2x2(name="features_2")(x)
        x = nn.relu(_conv(16, 16, self.init_scheme, "features_3")(x))
        feature_map = MaxPool2x2(name="features_5")(x)
        hidden = flatten_channel_major(feature_map)
        logits = _classifier(
            hidden, 256, self.num_classes, self.dropout_rate, self.init_scheme, train
        )
        regressed = Regressor(init_scheme=self.init_scheme, name="regressor")(feature_map) if self.hint else None
        return ModelOutput(logits=logits, hidden=hidden, feature_map=feature_map, regressed=regressed)


def _tutorial(module: nn.Module, feature_map: str) -> Network:
    return linen_network(module, input_shape=IMAGE_SHAPE, roles={"feature_map": feature_map},
                         logits=lambda output: output.logits)


def tutorial_teacher(**model_kwargs: Any) -> Network:
    """`DeepNN(**model_kwargs)`; role `feature_map` is its last pool, `[batch, 8, 8, 32]`."""
    return _tutorial(DeepNN(**model_kwargs), "features_9")


def tutorial_student(**model_kwargs: Any) -> Network:
    """`LightNN(**model_kwargs)`; role `feature_map` is its last pool, `[batch, 8, 8, 16]`."""
    return _tutorial(LightNN(**model_kwargs), "features_5")
