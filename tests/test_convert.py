"""PyTorch state_dict conversion."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weights
from kdjax import convert
from kdjax.convert import from_torch, model_for_state_dict, to_torch
from kdjax.zoo.tutorial import DeepNN, LightNN


def test_layouts_follow_pytorch_conventions():
    state = weights.student_state_dict()
    params = from_torch(state)["params"]
    np.testing.assert_array_equal(params["features_0"]["kernel"], state["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["classifier_0"]["kernel"], state["classifier.0.weight"].T)
    np.testing.assert_array_equal(params["classifier_3"]["bias"], state["classifier.3.bias"])


@pytest.mark.parametrize("model", [DeepNN(), LightNN(), LightNN(hint=True)])
def test_round_trip(model):
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    state = to_torch(variables)
    assert model_for_state_dict(state) == model
    jax.tree.map(np.testing.assert_array_equal, from_torch(state), variables)


def test_accepts_tensor_like_values_without_torch():
    class FakeTensor:  # what from_torch relies on: .detach().cpu().numpy()
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    state = weights.student_state_dict()
    converted = from_torch({name: FakeTensor(value) for name, value in state.items()})
    jax.tree.map(np.testing.assert_array_equal, converted, from_torch(state))


def test_accepts_a_real_torch_state_dict():
    torch = pytest.importorskip("torch", reason="torch is optional; install kdjax[reference] to run this")
    state = weights.regressor_state_dict() | weights.student_state_dict()
    tensors = {name: torch.from_numpy(value).requires_grad_() for name, value in state.items()}
    jax.tree.map(np.testing.assert_array_equal, from_torch(tensors), from_torch(state))


def test_rejects_unknown_missing_and_misshapen_parameters():
    state = weights.student_state_dict()
    with pytest.raises(ValueError, match="matches none of the tutorial's models"):
        from_torch(state | {"extra.0.weight": np.zeros(1)})
    incomplete = dict(state)
    del incomplete["features.3.bias"]
    with pytest.raises(ValueError, match="lacks 'features.3.bias'"):
        from_torch(incomplete)
    with pytest.raises(ValueError, match=r"'classifier.0.weight' has shape \(1024, 256\)"):
        from_torch(state | {"classifier.0.weight": state["classifier.0.weight"].T})


@pytest.mark.slow
def test_the_names_a_released_teacher_needs_are_pytorchs():
    """`python -m kdjax.convert NAME` lists the keys of the reference PyTorch model's own state_dict."""
    import os
    import subprocess
    import sys

    reference = np.load(pathlib.Path(__file__).parent / "reference" / "zoo_reference.npz")
    assert sorted(convert.state_dict_shapes("resnet8", num_classes=100)) == list(reference["resnet8/keys"])
    assert convert.state_dict_shapes("deepnn")["classifier.0.weight"] == (512, 2048)  # torch's [out, in]
    listed = subprocess.run([sys.executable, "-m", "kdjax.convert", "resnet8", "100"], check=True,
                            capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert "fc.weight (100, 64)" in listed.stdout.splitlines() and not listed.stderr
