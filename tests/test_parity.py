"""kdjax against the PyTorch tutorial's own code.

Expected values come from `tests/reference/reference.npz`, written by
`tests/reference/make_reference.py` with the tutorial's classes and loss formulas in
PyTorch (CPU, float32); the weights and batches are regenerated from `weights.py` and
checked against the fingerprints stored with the fixture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weights
from conftest import REFERENCE_DIR
from kdjax import losses
from kdjax.convert import from_torch, to_torch
from kdjax.zoo.tutorial import DeepNN, LightNN
from kdjax import methods
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.teacher import Teacher
from kdjax.train import TrainState, build_objective, objective_loss, train_step

RTOL, ATOL = 1e-5, 1e-6
OBJECTIVES = ("ce", "kd", "cosine", "hint")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def batches() -> tuple[np.ndarray, np.ndarray]:
    images, labels = weights.batches()
    return images.transpose(0, 1, 3, 4, 2), labels.astype(np.int32)  # NCHW -> NHWC


@pytest.fixture(scope="module")
def teacher_params():
    return from_torch(weights.teacher_state_dict())["params"]


def _student_params(objective: str):
    """The engine's layout: `{"model": LightNN params, "adapter": {"regressor": ...}}` (hint only)."""
    if objective != "hint":
        return {"model": from_torch(weights.student_state_dict())["params"]}
    both = dict(from_torch(weights.student_state_dict() | weights.regressor_state_dict())["params"])
    return {"model": both, "adapter": {"regressor": both.pop("regressor")}}


def _flat(params):
    """`LightNN(hint=True)`'s own layout of the same params."""
    return {**params["model"], **params.get("adapter", {})}


def _torch_names(params) -> dict[str, np.ndarray]:
    return to_torch({"params": _flat(params)})


def _objective(objective: str):
    return build_objective(methods.get(objective), tutorial_student(dropout_rate=0.0), tutorial_teacher())


def _nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def _assert_matches_stored(ref, key: str, actual: np.ndarray) -> None:
    if f"{key}/full" in ref:
        np.testing.assert_allclose(actual, ref[f"{key}/full"], rtol=RTOL, atol=ATOL, err_msg=key)
        return
    flat = actual.reshape(-1)
    np.testing.assert_allclose(flat[ref[f"{key}/idx"]], ref[f"{key}/values"], rtol=RTOL, atol=ATOL, err_msg=key)
    as64 = flat.astype(np.float64)
    np.testing.assert_allclose(np.abs(as64).sum(), ref[f"{key}/l1"], rtol=RTOL, err_msg=key)
    assert abs(as64.sum() - ref[f"{key}/sum"]) <= RTOL * ref[f"{key}/l1"], key


def test_fixture_inputs_regenerate_exactly(ref):
    images, labels = weights.batches()
    assert weights.fingerprint(weights.teacher_state_dict()) == str(ref["fingerprint/teacher"])
    assert weights.fingerprint(weights.student_state_dict()) == str(ref["fingerprint/student"])
    assert weights.fingerprint(weights.regressor_state_dict()) == str(ref["fingerprint/regressor"])
    assert weights.fingerprint({"images": images, "labels": labels}) == str(ref["fingerprint/batches"])


def test_forward_outputs(ref, batches, teacher_params):
    images = batches[0][0]
    teacher = DeepNN().apply({"params": teacher_params}, images)
    student = LightNN(dropout_rate=0.0, hint=True).apply({"params": _flat(_student_params("hint"))}, images)
    expected = {
        "teacher_logits": teacher.logits,
        "teacher_hidden": teacher.hidden,
        "teacher_pooled": losses.avg_pool_pairs(teacher.hidden),
        "teacher_feature_map": _nchw(teacher.feature_map),
        "student_logits": student.logits,
        "student_hidden": student.hidden,
        "student_feature_map": _nchw(student.feature_map),
        "regressor_output": _nchw(student.regressed),
    }
    for name, actual in expected.items():
        np.testing.assert_allclose(actual, ref[f"forward/{name}"], rtol=RTOL, atol=ATOL, err_msg=name)


def test_loss_values(ref, batches, teacher_params):
    images, labels = batches[0][0], batches[1][0]
    teacher = DeepNN().apply({"params": teacher_params}, images)
    student = LightNN(dropout_rate=0.0, hint=True).apply({"params": _flat(_student_params("hint"))}, images)
    values = {
        "ce": losses.cross_entropy(student.logits, labels),
        "kd": losses.kd_loss(student.logits, teacher.logits, temperature=2.0),
        "cosine": losses.cosine_loss(student.hidden, losses.avg_pool_pairs(teacher.hidden)),
        "hint": losses.hint_loss(student.regressed, teacher.feature_map),
    }
    for name, value in values.items():
        np.testing.assert_allclose(value, ref[f"loss/{name}"], rtol=RTOL, atol=ATOL, err_msg=name)


def test_kd_cross_entropy_form_differs_by_teacher_entropy(ref, batches, teacher_params):
    teacher = DeepNN().apply({"params": teacher_params}, batches[0][0])
    log_p = jax.nn.log_softmax(teacher.logits / 2.0)
    mean_entropy = -jnp.sum(jnp.exp(log_p) * log_p) / log_p.shape[0]
    cross_entropy_form = ref["loss/kd_cross_entropy_form"]
    # The difference of two ~9-nat terms leaves ~0.01: float32 rounding of the terms, not
    # of the result, bounds the error, so the tolerance scales with the terms.
    np.testing.assert_allclose(
        cross_entropy_form - mean_entropy * 4.0, ref["loss/kd"], rtol=0, atol=RTOL * cross_entropy_form
    )


def _objective_fn(objective: str, teacher_params):
    built = _objective(objective)
    hp = methods.get(objective).resolve()

    def loss(params, images, labels):
        outputs = Teacher(tutorial_teacher(), teacher_params, {}).outputs({"inputs": images}, built.method.reads)
        batch = {"inputs": images, "label": labels}
        return objective_loss(params, {"model": {}}, batch, jax.random.key(0), outputs, hp, objective=built)[0]

    return loss


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_gradients(ref, batches, teacher_params, objective):
    loss, grads = jax.value_and_grad(_objective_fn(objective, teacher_params))(
        _student_params(objective), batches[0][0], batches[1][0]
    )
    np.testing.assert_allclose(loss, ref[f"objective/{objective}"], rtol=RTOL, atol=ATOL)
    torch_grads = _torch_names(grads)
    assert sorted(torch_grads) == sorted({k.split("/")[2] for k in ref if k.startswith(f"grad/{objective}/")})
    for name, grad in torch_grads.items():
        _assert_matches_stored(ref, f"grad/{objective}/{name}", grad)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_params_after_adam_steps(ref, batches, teacher_params, objective):
    state = TrainState.create(apply_fn=None, params=_student_params(objective), tx=optax.adam(1e-3),
                              model_state={"model": {}})
    built = _objective(objective)
    hp = methods.get(objective).resolve()

    @jax.jit
    def step(state, batch):
        outputs = Teacher(tutorial_teacher(), teacher_params, {}).outputs(batch, built.method.reads)
        return train_step(state, batch, jax.random.key(0), outputs, hp, objective=built)

    images, labels = batches
    for index in range(weights.STEPS):
        state, _ = step(state, {"inputs": jnp.asarray(images[index]), "label": jnp.asarray(labels[index])})
    for name, value in _torch_names(state.params).items():
        _assert_matches_stored(ref, f"params/{objective}/{name}", value)
