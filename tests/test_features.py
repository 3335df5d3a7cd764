"""Reading intermediates by module path from linen and NNX models, and distilling between models kdjax does not ship."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from kdjax.features import UnknownFeatureError, capture
from kdjax.zoo.tutorial import DeepNN, max_pool_2x2


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(6, name="conv1")(x))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(name="block2")(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(3, name="head")(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(4, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)])
        self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.head(x)


def test_linen_paths_read_the_submodule_call_outputs():
    model, x = LinenNet(), jnp.arange(8.0).reshape(2, 4)
    variables = model.init(jax.random.key(0), x)
    out, feats = capture(model, variables, x, paths=["block2/conv1", "block2"])
    dense = variables["params"]["block2"]["conv1"]
    np.testing.assert_allclose(feats["block2/conv1"], x @ dense["kernel"] + dense["bias"], rtol=1e-6)
    np.testing.assert_allclose(feats["block2"], np.maximum(feats["block2/conv1"], 0), rtol=1e-6)
    np.testing.assert_array_equal(out, model.apply(variables, x))


def test_the_tutorial_teachers_last_pool_is_readable_by_path():
    model, x = DeepNN(), jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    out, feats = capture(model, variables, x, paths=["features_9", "features_7"])
    np.testing.assert_array_equal(feats["features_9"], out.feature_map)
    np.testing.assert_array_equal(feats["features_9"], max_pool_2x2(jax.nn.relu(feats["features_7"])))


def test_linen_capture_passes_apply_kwargs_and_works_under_jit_and_grad():
    model, x = LinenNet(), jnp.ones((2, 4))
    variables = model.init(jax.random.key(0), x)

    @jax.jit
    def loss(params):
        _, feats = capture(model, {"params": params}, x, paths=["block2"], train=True,
                           rngs={"dropout": jax.random.key(1)})
        return jnp.sum(feats["block2"] ** 2)

    grads = jax.grad(loss)(variables["params"])
    assert float(jnp.abs(grads["block2"]["conv1"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["head"]["kernel"]).sum()) == 0  # the head is after the captured block


def test_nnx_paths_including_list_entries():
    model, x = NnxNet(nnx.Rngs(0)), jnp.ones((2, 4))
    out, feats = capture(model, x, paths=["layers/1", "head"])
    np.testing.assert_array_equal(feats["head"], out)
    assert feats["layers/1"].shape == (2, 6)
    np.testing.assert_array_equal(out, model(x))  # the model itself is unchanged
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, x: capture(nnx.merge(graphdef, s), x, paths=["layers/0"])[1]["layers/0"])
    np.testing.assert_allclose(jitted(state, x), model.layers[0](x), rtol=1e-6)


@pytest.mark.parametrize("make", ["linen", "nnx"])
def test_an_unknown_path_lists_the_paths_the_model_has(make):
    x = jnp.ones((2, 4))
    if make == "linen":
        model = LinenNet()
        args = (model.init(jax.random.key(0), x), x)
        expected = "block2, block2/conv1, head"
    else:
        model, args, expected = NnxNet(nnx.Rngs(0)), (x,), "head, layers, layers/0, layers/1"
    with pytest.raises(UnknownFeatureError, match=f"no submodule output at 'block9'; the model's paths are: .*{expected}"):
        capture(model, *args, paths=["block9"])


def test_a_module_called_twice_is_refused():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.Dense(4, name="shared")
            return dense(dense(x))

    model, x = Twice(), jnp.ones((1, 4))
    with pytest.raises(ValueError, match="'shared' is called 2 times"):
        capture(model, model.init(jax.random.key(0), x), x, paths=["shared"])
