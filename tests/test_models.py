"""Model shapes, parameter counts, dropout and initialisation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kdjax.zoo.tutorial import DeepNN, LightNN, Regressor, flatten_channel_major, max_pool_2x2

# The tutorial's counts: DeepNN 1,186,986 and LightNN 267,738; the regressor is Conv2d(16, 32, 3).
PARAM_COUNTS = {"teacher": 1_186_986, "student": 267_738, "regressor": 4_640}
IMAGES = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))


def _count(variables) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(variables))


def test_parameter_counts():
    key = jax.random.key(0)
    assert _count(DeepNN().init(key, IMAGES)) == PARAM_COUNTS["teacher"]
    assert _count(LightNN().init(key, IMAGES)) == PARAM_COUNTS["student"]
    assert _count(Regressor().init(key, jnp.zeros((1, 8, 8, 16)))) == PARAM_COUNTS["regressor"]
    assert _count(LightNN(hint=True).init(key, IMAGES)) == PARAM_COUNTS["student"] + PARAM_COUNTS["regressor"]


@pytest.mark.parametrize(
    "model,hidden,feature_map",
    [(DeepNN(), 2048, (8, 8, 32)), (LightNN(), 1024, (8, 8, 16)), (LightNN(hint=True), 1024, (8, 8, 16))],
)
def test_output_shapes_and_channel_major_hidden(model, hidden, feature_map):
    out = model.apply(model.init(jax.random.key(1), IMAGES), IMAGES)
    assert out.logits.shape == (4, 10)
    assert out.hidden.shape == (4, hidden)
    assert out.feature_map.shape == (4, *feature_map)
    # torch.flatten on NCHW: channel 0's 8x8 plane first, row-major within it.
    np.testing.assert_array_equal(out.hidden[:, :64], out.feature_map[..., 0].reshape(4, 64))
    np.testing.assert_array_equal(out.hidden[:, 64:128], out.feature_map[..., 1].reshape(4, 64))
    assert (out.regressed is not None) == getattr(model, "hint", False)
    if out.regressed is not None:
        assert out.regressed.shape == (4, 8, 8, 32)


def test_flatten_channel_major_matches_nchw_flatten():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)  # NHWC
    np.testing.assert_array_equal(flatten_channel_major(x), x.transpose(0, 3, 1, 2).reshape(2, -1))


def test_max_pool_2x2_matches_flax_max_pool():
    x = jax.random.normal(jax.random.key(2), (2, 8, 6, 5))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("model", [DeepNN(), LightNN()])
def test_dropout_only_in_training_and_driven_by_the_key(model):
    variables = model.init(jax.random.key(3), IMAGES)
    eval_a = model.apply(variables, IMAGES, train=False).logits
    eval_b = model.apply(variables, IMAGES).logits
    np.testing.assert_array_equal(eval_a, eval_b)
    train = lambda key: model.apply(variables, IMAGES, train=True, rngs={"dropout": key}).logits  # noqa: E731
    np.testing.assert_array_equal(train(jax.random.key(4)), train(jax.random.key(4)))
    assert not np.allclose(train(jax.random.key(4)), train(jax.random.key(5)))
    assert not np.allclose(train(jax.random.key(4)), eval_a)
    no_dropout = model.clone(dropout_rate=0.0)
    np.testing.assert_allclose(
        no_dropout.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(4)}).logits, eval_a
    )
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, IMAGES, train=True)


def test_torch_init_matches_pytorch_default_bounds():
    params = DeepNN().init(jax.random.key(5), IMAGES)["params"]
    for name, layer in params.items():
        kernel = np.asarray(layer["kernel"])
        fan_in = int(np.prod(kernel.shape[:-1]))  # HWI for convs, in_features for dense
        bound = 1.0 / math.sqrt(fan_in)
        for values in (kernel, np.asarray(layer["bias"])):
            assert np.abs(values).max() <= bound, name
            if values.size > 10_000:  # U(-b, b): std b/sqrt(3), and it reaches the ends
                np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.02, err_msg=name)
                assert np.abs(values).max() > 0.99 * bound


def test_flax_init_scheme_is_available():
    params = LightNN(init_scheme="flax").init(jax.random.key(6), IMAGES)["params"]
    np.testing.assert_array_equal(params["classifier_0"]["bias"], 0.0)  # Flax's zeros bias init
    with pytest.raises(ValueError, match="init_scheme"):
        LightNN(init_scheme="kaiming").init(jax.random.key(6), IMAGES)


def test_same_key_gives_same_student_with_or_without_regressor():
    plain = LightNN().init(jax.random.key(7), IMAGES)["params"]
    hinted = LightNN(hint=True).init(jax.random.key(7), IMAGES)["params"]
    hinted.pop("regressor")
    jax.tree.map(np.testing.assert_array_equal, plain, hinted)


def test_rejects_images_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"NHWC images of shape \[batch, 32, 32, 3\]"):
        LightNN().init(jax.random.key(0), jnp.zeros((2, 3, 32, 32)))
