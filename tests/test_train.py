"""Train and eval steps: stop-gradient on the teacher, masking, learning, and determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax.models import DeepNN, LightNN
from kdjax.train import (
    OBJECTIVES,
    LossConfig,
    create_train_state,
    make_eval_step,
    make_train_step,
    objective_loss,
)


def _batch(seed: int, size: int = 8) -> dict[str, jax.Array]:
    key_image, key_label = jax.random.split(jax.random.key(seed))
    return {
        "image": jax.random.normal(key_image, (size, 32, 32, 3)),
        "label": jax.random.randint(key_label, (size,), 0, 10),
    }


@pytest.fixture(scope="module")
def teacher_params():
    return DeepNN().init(jax.random.key(100), jnp.zeros((1, 32, 32, 3)))["params"]


def _student(objective: str, dropout_rate: float = 0.1) -> LightNN:
    return LightNN(dropout_rate=dropout_rate, hint=objective == "hint")


@pytest.mark.parametrize("objective", ["kd", "cosine", "hint"])
def test_teacher_receives_no_gradient(objective, teacher_params):
    student = _student(objective)
    params = student.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    batch = _batch(1)

    def loss_wrt_teacher(teacher_params):
        teacher_outputs = DeepNN().apply({"params": teacher_params}, batch["image"])
        return objective_loss(
            params, teacher_outputs, batch, jax.random.key(2), apply_fn=student.apply,
            config=LossConfig(objective=objective),
        )[0]

    grads = jax.grad(loss_wrt_teacher)(teacher_params)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)
    # ...while without the stop-gradient the same objective would move the teacher.
    raw = jax.grad(lambda t: losses.kd_loss(
        student.apply({"params": params}, batch["image"]).logits,
        DeepNN().apply({"params": t}, batch["image"]).logits,
    ))(teacher_params)
    assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(raw))


def test_same_seed_gives_the_same_initial_student_for_every_objective():
    states = {o: create_train_state(_student(o), jax.random.key(42)) for o in OBJECTIVES}
    reference = states["ce"].params
    for objective, state in states.items():
        params = dict(state.params)
        params.pop("regressor", None)
        jax.tree.map(np.testing.assert_array_equal, params, reference)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_fits_a_fixed_batch(objective, teacher_params):
    state = create_train_state(_student(objective), jax.random.key(0))
    step = make_train_step(LossConfig(objective=objective))
    batch = _batch(3, size=16)
    first = None
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(4), teacher_params)
        first = metrics if first is None else first
    assert int(state.step) == 25
    assert float(metrics["loss"]) < 0.5 * float(first["loss"])
    assert float(metrics["ce_loss"]) < float(first["ce_loss"])
    if objective != "ce":
        np.testing.assert_allclose(
            metrics["loss"], 0.75 * metrics["ce_loss"] + 0.25 * metrics["aux_loss"], rtol=1e-6
        )
    assert step._cache_size() == 1  # one compilation for every step


@pytest.mark.parametrize("objective", ["kd", "cosine", "hint"])
def test_aux_term_alone_pulls_the_student_towards_the_teacher(objective, teacher_params):
    state = create_train_state(_student(objective), jax.random.key(0))
    step = make_train_step(LossConfig(objective=objective, ce_weight=0.0, aux_weight=1.0, temperature=1.0))
    batch = _batch(8, size=16)
    state, first = step(state, batch, jax.random.key(4), teacher_params)
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(4), teacher_params)
    assert float(metrics["aux_loss"]) < 0.5 * float(first["aux_loss"])
    np.testing.assert_allclose(metrics["loss"], metrics["aux_loss"], rtol=1e-6)


def test_teacher_trains_with_the_ce_step():
    state = create_train_state(DeepNN(), jax.random.key(0))
    step = make_train_step(LossConfig(objective="ce"))
    batch = _batch(5)
    state, first = step(state, batch, jax.random.key(0))
    for _ in range(4):
        state, metrics = step(state, batch, jax.random.key(0))
    assert float(metrics["loss"]) < float(first["loss"])


def test_padding_rows_contribute_nothing(teacher_params):
    """A padded batch (mask False on the padding) steps exactly like the unpadded one."""
    state = create_train_state(_student("kd", dropout_rate=0.0), jax.random.key(0))
    step = make_train_step(LossConfig(objective="kd"))
    real = _batch(6, size=6)
    padded = {
        "image": jnp.concatenate([real["image"], jnp.full((2, 32, 32, 3), 1e3)]),
        "label": jnp.concatenate([real["label"], jnp.array([9, 9])]),
        "mask": jnp.arange(8) < 6,
    }
    other_padding = dict(padded, image=padded["image"].at[6:].set(-7.0), label=padded["label"].at[6:].set(0))
    new_a, metrics_a = step(state, padded, jax.random.key(1), teacher_params)
    new_b, metrics_b = step(state, other_padding, jax.random.key(1), teacher_params)
    jax.tree.map(np.testing.assert_array_equal, new_a.params, new_b.params)  # bitwise
    unpadded, metrics = step(state, real, jax.random.key(1), teacher_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_a.params, unpadded.params)
    np.testing.assert_allclose(metrics_a["loss"], metrics["loss"], rtol=1e-5)


def test_eval_step_counts_and_sums():
    model = LightNN()
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    batch = _batch(7, size=10) | {"mask": jnp.arange(10) < 7}
    result = make_eval_step(model)(params, batch)
    logits = model.apply({"params": params}, batch["image"]).logits[:7]
    labels = batch["label"][:7]
    assert int(result["count"]) == 7
    assert int(result["correct"]) == int(jnp.sum(logits.argmax(-1) == labels))
    np.testing.assert_allclose(result["loss_sum"], 7 * losses.cross_entropy(logits, labels), rtol=1e-5)


def test_step_rejects_missing_teacher_and_bad_batches():
    state = create_train_state(_student("kd"), jax.random.key(0))
    with pytest.raises(ValueError, match="needs teacher_params"):
        make_train_step(LossConfig(objective="kd"))(state, _batch(0), jax.random.key(0))
    bad = {"image": jnp.zeros((4, 3, 32, 32)), "label": jnp.zeros((4,), jnp.int32)}
    with pytest.raises(ValueError, match=r"image \[batch, 32, 32, 3\]"):
        make_train_step(LossConfig())(state, bad, jax.random.key(0))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"objective": "mse"}, "objective must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"ce_weight": -0.1}, "loss weights must be >= 0"),
    ],
)
def test_loss_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)
