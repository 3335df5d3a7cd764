"""The zoo against its PyTorch restatement (`tests/reference/zoo_torch.py`, fixture from `make_zoo_reference.py`).

Per network, on the same deterministic weights and images: `state_dict` names and shapes,
parameter count, eval- and train-mode logits and every role's features, the running
statistics a training pass leaves, the cross-entropy and its gradient.

Both sides compute in float64. These random-weight networks at a batch of 4 are badly
conditioned: float32 alone moves the first layers' gradients by up to 1 % on either side
(PyTorch float32 against its own float64, and kdjax's likewise), which would hide a real
error behind a loose tolerance. In float64 the implementations agree to rtol 1e-5 (the
test's tolerance) with room to spare; `test_float32_forward_matches` checks the float32
forward pass as users run it.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo_weights
from kdjax import convert, zoo

# The CIFAR zoo against its PyTorch restatement, the ImageNet networks against torchvision (make_imagenet_reference.py).
REFERENCE = {key: value for name in ("zoo_reference.npz", "imagenet_reference.npz")
             for key, value in np.load(pathlib.Path(__file__).parent / "reference" / name).items()}
NAMES = list(dict.fromkeys(key.split("/")[0] for key in REFERENCE))
QUICK = ("resnet8", "vgg8", "wrn_16_2")  # one of each family's cheapest; the deeper ones are marked slow
# Their sizes at ImageNet's 1,000 classes, as torchvision documents them (MobileNetV1: Howard et al. 2017, 4.2 M).
IMAGENET_PARAMETERS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "mobilenetv1": 4_231_976}
# The benchmarks' published sizes at 100 classes (CRD, Tian et al. 2020, Table 1 and 2), in millions.
PUBLISHED_MILLIONS = {"resnet8": 0.08, "resnet14": 0.18, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67,
                      "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_16_2": 0.70,
                      "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46, "mobilenetv2": 0.81,
                      "shufflenetv1": 0.95, "shufflenetv2": 1.36}
RTOL, ATOL = 1e-5, 1e-7


def _variables(name: str, dtype=jnp.float32):
    module = zoo.module(name, num_classes=100)
    shapes = convert.zoo_to_torch(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
                                  shapes_only=True)
    variables = jax.tree.map(lambda leaf: leaf.astype(dtype),
                             convert.zoo_from_torch(name, zoo_weights.state_dict(shapes)))
    return shapes, variables["params"], {"batch_stats": variables["batch_stats"]}


@functools.cache
def _program(name: str):
    network = zoo.network(name, num_classes=100)
    roles = tuple(network.roles)

    @jax.jit
    def run(params, state, images, labels):
        eval_logits, eval_features, kept = network.forward(params, state, images, train=False, roles=roles)

        def loss_fn(params):
            logits, features, new_state = network.forward(params, state, images, train=True, roles=roles)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, features, new_state)

        (loss, train), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return (eval_logits, eval_features, kept), (loss, *train), grads

    return run


def _close(actual, expected, scale: float, what: str) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def _check_features(name: str, mode: str, features: dict) -> None:
    for role, value in features.items():
        key = f"{name}/{mode}/{role}"
        value = np.asarray(value, np.float64)
        expected_sample = REFERENCE[f"{key}/sample"]
        scale = max(1.0, float(np.abs(expected_sample).max()))
        _close(zoo_weights.sample(value), expected_sample, scale, key)
        np.testing.assert_allclose(np.square(value).sum(), REFERENCE[f"{key}/sumsq"], rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(value.sum(), REFERENCE[f"{key}/sum"], rtol=1e-4,
                                   atol=1e-6 * np.sqrt(value.size * REFERENCE[f"{key}/sumsq"]), err_msg=key)


# Deeper instances of a network the parity test covers (the same modules, more blocks): their keys and sizes only.
DEEPER = {"resnet44": "resnet32", "resnet56": "resnet32", "resnet110": "resnet32", "resnet34": "resnet18"}


@pytest.mark.parametrize("name", [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow)
                                  for name in NAMES if name not in DEEPER])
def test_matches_pytorch(name):
    shapes, params, state = _variables(name)
    assert sorted(shapes) == list(REFERENCE[f"{name}/keys"])
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert count == int(REFERENCE[f"{name}/parameters"])
    if name in IMAGENET_PARAMETERS:
        params_1000 = jax.eval_shape(zoo.network(name, num_classes=1000).init, jax.random.key(0))[0]
        assert sum(leaf.size for leaf in jax.tree.leaves(params_1000)) == IMAGENET_PARAMETERS[name]
    else:
        assert abs(count / 1e6 - PUBLISHED_MILLIONS[name]) <= 0.01
    network = zoo.network(name, num_classes=100)
    assert {key.split("/")[2] for key in REFERENCE if key.startswith(f"{name}/eval/") and
            key.count("/") == 3} == set(network.roles) - {"feature_map"}

    images, labels = zoo_weights.images(name)
    with jax.enable_x64(True):
        shapes, params, state = _variables(name, jnp.float64)
        (eval_logits, eval_features, kept), (loss, logits, features, new_state), grads = _program(name)(
            params, state, jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float64), jnp.asarray(labels))
        assert eval_logits.dtype == jnp.float64 and jax.tree.leaves(grads)[0].dtype == jnp.float64
    _close(eval_logits, REFERENCE[f"{name}/eval/logits"], 1.0, "eval logits")
    _close(logits, REFERENCE[f"{name}/train/logits"], 1.0, "train logits")
    _close(loss, REFERENCE[f"{name}/train/loss"], 1.0, "loss")
    _check_features(name, "eval", {r: v for r, v in eval_features.items() if r != "feature_map"})
    _check_features(name, "train", {r: v for r, v in features.items() if r != "feature_map"})
    jax.tree.map(np.testing.assert_array_equal, kept, state)  # inference leaves the statistics alone

    torch_stats = convert.zoo_to_torch(new_state)
    stats = [key for key in sorted(torch_stats) if key.endswith(("running_mean", "running_var"))]
    _close(np.concatenate([zoo_weights.sample(torch_stats[key]) for key in stats]), REFERENCE[f"{name}/stats"], 1.0,
           "running statistics after a training pass")

    torch_grads = convert.zoo_to_torch({"params": grads})
    keys = sorted(torch_grads)
    norms = np.array([np.linalg.norm(np.asarray(torch_grads[key], np.float64)) for key in keys])
    expected_norms = REFERENCE[f"{name}/grad_norm"]
    # A conv bias followed by BatchNorm has a zero gradient: both sides give float64 round-off (~1e-16) there.
    np.testing.assert_allclose(norms, expected_norms, rtol=RTOL, atol=1e-12 * expected_norms.max(),
                               err_msg="gradient norms")
    sample = np.concatenate([zoo_weights.sample(torch_grads[key]) for key in keys])
    _close(sample, REFERENCE[f"{name}/grad_sample"], float(np.abs(REFERENCE[f"{name}/grad_sample"]).max()),
           "gradient entries")


@pytest.mark.parametrize("name", DEEPER)
def test_deeper_instances_have_the_references_keys_and_size(name):
    shapes, params, _ = _variables(name)
    assert sorted(shapes) == list(REFERENCE[f"{name}/keys"])
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == int(REFERENCE[f"{name}/parameters"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet110", "wrn_40_2", "vgg13", "mobilenetv2", "shufflenetv2"])
def test_float32_forward_matches(name):
    """float32, as users run it: logits to 1e-5 of their scale in eval mode, 1e-4 in training mode (batch
    statistics of 4 images, float32 against float64)."""
    _, params, state = _variables(name)
    images, _ = zoo_weights.images(name)
    network = zoo.network(name, num_classes=100)
    x = jnp.asarray(images.transpose(0, 2, 3, 1))
    for mode, tolerance in (("eval", 1e-5), ("train", 1e-4)):
        logits, _, _ = jax.jit(functools.partial(network.forward, train=mode == "train"))(params, state, x)
        expected = REFERENCE[f"{name}/{mode}/logits"]
        np.testing.assert_allclose(logits, expected, rtol=0, atol=tolerance * np.abs(expected).max(), err_msg=mode)


@pytest.mark.slow
@pytest.mark.parametrize("teacher_name, student_name, compiled", [("resnet8x4", "resnet8", True),
                                                                   ("wrn_40_2", "wrn_16_2", False)])
def test_every_method_trains_between_zoo_pairs(teacher_name, student_name, compiled):
    """Every registered method for any data (`methods.any_data`), from the teacher's inference-mode outputs, on 8
    images, traced for its shapes (`jax.eval_shape`: where a pair's roles can clash); on the first pair, the methods
    that read the networks' feature maps also take two compiled steps. Those of logits alone are the same programs
    with another loss of the logits, which the loss tests check (`test_losses_battery.py`, `test_loss_parity.py`)."""
    from kdjax import methods
    from kdjax.teacher import Teacher
    from kdjax.train import build_objective, create_train_state, train_step

    teacher, student = zoo.network(teacher_name), zoo.network(student_name)
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    batch = {"inputs": images, "label": jax.random.randint(jax.random.key(1), (8,), 0, 10)}
    reads = tuple(dict.fromkeys(role for method in methods.any_data() for role in method.reads))
    teach = lambda v: Teacher(teacher, *v).outputs({"inputs": images}, reads)  # noqa: E731
    outputs = jax.eval_shape(teach, jax.eval_shape(teacher.init, jax.random.key(2)))
    for method in methods.any_data():
        name, objective = method.name, build_objective(method, student, teacher)
        state = jax.eval_shape(lambda: create_train_state(objective, jax.random.key(3)))
        step = functools.partial(train_step, objective=objective)
        new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0),
                                            outputs if method.needs_teacher else None, method.resolve())
        assert jax.tree.structure(new_state) == jax.tree.structure(state) and metrics["loss"].shape == (), name
    if not compiled:
        return
    outputs = jax.jit(teach)(teacher.init(jax.random.key(2)))
    initial = create_train_state(build_objective(methods.get("ce"), student), jax.random.key(3)).model_state
    for method in [m for m in methods.any_data() if set(m.reads) - {"logits"}]:
        name, objective = method.name, build_objective(method, student, teacher)
        state = create_train_state(objective, jax.random.key(3))
        step = jax.jit(functools.partial(train_step, objective=objective))
        for index in range(2):
            state, metrics = step(state, batch, jax.random.key(index), outputs if method.needs_teacher else None,
                                  method.resolve())
            assert bool(metrics["finite"]), (name, index)
        assert not np.allclose(state.model_state["model"]["batch_stats"]["bn1"]["mean"],
                               initial["model"]["batch_stats"]["bn1"]["mean"]), name
