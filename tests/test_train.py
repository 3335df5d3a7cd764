"""One member's train and eval steps on the tutorial's networks: gradients, masks, weighting, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses, methods
from kdjax.zoo.tutorial import DeepNN, LightNN
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.teacher import Teacher
from kdjax.train import build_objective, create_train_state, eval_step, objective_loss, train_step

OBJECTIVES = ("ce", "kd", "cosine", "hint")


def _batch(seed: int, size: int = 8) -> dict[str, jax.Array]:
    key_image, key_label = jax.random.split(jax.random.key(seed))
    return {"inputs": jax.random.normal(key_image, (size, 32, 32, 3)),
            "label": jax.random.randint(key_label, (size,), 0, 10)}


@pytest.fixture(scope="module")
def teacher_params():
    """The teacher's `(params, state)`; the tutorial's DeepNN keeps no state."""
    return DeepNN().init(jax.random.key(100), jnp.zeros((1, 32, 32, 3)))["params"], {}


def _objective(name: str, dropout_rate: float = 0.1):
    return build_objective(methods.get(name), tutorial_student(dropout_rate=dropout_rate), tutorial_teacher())


def _step(name: str, teacher_params, dropout_rate: float = 0.1, **overrides):
    objective = _objective(name, dropout_rate)
    hp = methods.get(name).resolve(overrides)

    @jax.jit
    def step(state, batch, key):
        outputs = Teacher(tutorial_teacher(), *teacher_params).outputs(batch, objective.method.reads)
        return train_step(state, batch, key, outputs if objective.method.needs_teacher else None, hp,
                          objective=objective)

    return objective, step


@pytest.mark.parametrize("name", ["kd", "cosine", "hint"])
def test_teacher_receives_no_gradient(name, teacher_params):
    objective = _objective(name)
    state = create_train_state(objective, jax.random.key(0))
    batch = _batch(1)

    def loss_wrt_teacher(teacher_params):
        outputs = Teacher(tutorial_teacher(), *teacher_params).outputs(batch, objective.method.reads)
        return objective_loss(state.params, state.model_state, batch, jax.random.key(2), outputs,
                              methods.get(name).resolve(), objective=objective)[0]

    for leaf in jax.tree.leaves(jax.grad(loss_wrt_teacher)(teacher_params)):
        np.testing.assert_array_equal(leaf, 0.0)
    # ...while without the stop-gradient the same term would move the teacher.
    raw = jax.grad(lambda t: losses.kd_loss(
        LightNN().apply({"params": state.params["model"]}, batch["inputs"]).logits,
        DeepNN().apply({"params": t[0]}, batch["inputs"]).logits))(teacher_params)
    assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(raw))


def test_same_seed_gives_the_same_initial_student_for_every_method():
    states = {name: create_train_state(_objective(name), jax.random.key(42)) for name in OBJECTIVES}
    for name, state in states.items():
        jax.tree.map(np.testing.assert_array_equal, state.params["model"], states["ce"].params["model"])
    assert set(states["hint"].params) == {"model", "adapter"} and set(states["kd"].params) == {"model"}


def test_hint_adapter_starts_where_the_tutorials_regressor_does():
    key = jax.random.key(42)
    old = LightNN(hint=True).init(key, jnp.zeros((1, 32, 32, 3)))["params"]
    new = create_train_state(_objective("hint"), key).params
    jax.tree.map(np.testing.assert_array_equal, new["adapter"]["regressor"], old["regressor"])


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_method_fits_a_fixed_batch(name, teacher_params):
    objective, step = _step(name, teacher_params)
    state = create_train_state(objective, jax.random.key(0))
    batch = _batch(3, size=16)
    first = None
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(4))
        first = metrics if first is None else first
    assert int(state.step) == 25
    assert float(metrics["loss"]) < 0.5 * float(first["loss"])
    if name != "ce":
        np.testing.assert_allclose(metrics["loss"], 0.75 * metrics["ce_loss"] + 0.25 * metrics["aux_loss"], rtol=1e-6)
    assert step._cache_size() == 1  # one compilation for every step


@pytest.mark.parametrize("name", ["kd", "cosine", "hint"])
def test_aux_term_alone_pulls_the_student_towards_the_teacher(name, teacher_params):
    overrides = {"ce_weight": 0.0, "aux_weight": 1.0} | ({"temperature": 1.0} if name == "kd" else {})
    objective, step = _step(name, teacher_params, **overrides)
    state = create_train_state(objective, jax.random.key(0))
    batch = _batch(8, size=16)
    state, first = step(state, batch, jax.random.key(4))
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(4))
    assert float(metrics["aux_loss"]) < 0.5 * float(first["aux_loss"])
    np.testing.assert_allclose(metrics["loss"], metrics["aux_loss"], rtol=1e-6)


def test_padding_rows_contribute_nothing(teacher_params):
    """A padded batch (mask False on the padding) steps exactly like the unpadded one."""
    objective, step = _step("kd", teacher_params, dropout_rate=0.0)
    state = create_train_state(objective, jax.random.key(0))
    real = _batch(6, size=6)
    padded = {"inputs": jnp.concatenate([real["inputs"], jnp.full((2, 32, 32, 3), 1e3)]),
              "label": jnp.concatenate([real["label"], jnp.array([9, 9])]), "mask": jnp.arange(8) < 6}
    other_padding = dict(padded, image=padded["inputs"].at[6:].set(-7.0), label=padded["label"].at[6:].set(0))
    new_a, metrics_a = step(state, padded, jax.random.key(1))
    new_b, _ = step(state, other_padding, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, new_a.params, new_b.params)  # bitwise
    unpadded, metrics = step(state, real, jax.random.key(1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_a.params, unpadded.params)
    np.testing.assert_allclose(metrics_a["loss"], metrics["loss"], rtol=1e-5)


def test_eval_step_counts_and_sums():
    model = LightNN()
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    batch = _batch(7, size=10) | {"mask": jnp.arange(10) < 7}
    result = jax.jit(lambda p, b: eval_step(p, {}, b, network=tutorial_student()))(params, batch)
    logits = model.apply({"params": params}, batch["inputs"]).logits[:7]
    labels = batch["label"][:7]
    assert int(result["count"]) == 7
    assert int(result["correct"]) == int(jnp.sum(logits.argmax(-1) == labels))
    np.testing.assert_allclose(result["loss_sum"], 7 * losses.cross_entropy(logits, labels), rtol=1e-5)


def test_step_rejects_missing_teacher_and_bad_batches():
    objective = _objective("kd")
    state = create_train_state(objective, jax.random.key(0))
    with pytest.raises(ValueError, match="needs the teacher's outputs"):
        train_step(state, _batch(0), jax.random.key(0), None, methods.get("kd").resolve(), objective=objective)
    bad = {"inputs": jnp.zeros((4, 3, 32, 32)), "label": jnp.zeros((4,), jnp.int32)}
    with pytest.raises(ValueError, match=r"LightNN takes inputs \[batch, 32, 32, 3\] and label \[batch\]"):
        train_step(state, bad, jax.random.key(0), None, {}, objective=_objective("ce"))
    with pytest.raises(ValueError, match="needs a teacher network"):
        build_objective(methods.get("kd"), tutorial_student())


def test_unlabelled_rows_take_the_distillation_term_but_no_cross_entropy(teacher_params):
    objective = _objective("kd", dropout_rate=0.0)
    state = create_train_state(objective, jax.random.key(0))
    params = state.params
    batch = _batch(3) | {"labelled": jnp.arange(8) < 3}
    teacher = Teacher(tutorial_teacher(), *teacher_params).outputs(batch, ("logits",))
    hp = methods.get("kd").resolve({})
    loss, _ = objective_loss(params, state.model_state, batch, jax.random.key(1), teacher, hp, objective=objective)
    logits, _, _ = objective.student.forward(params["model"], {}, batch["inputs"], train=False)
    expected = (0.75 * losses.cross_entropy(logits[:3], batch["label"][:3])
                + 0.25 * losses.kd_loss(logits, teacher["logits"], temperature=2.0))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    relabelled = batch | {"label": batch["label"].at[3:].set((batch["label"][3:] + 1) % 10)}
    assert objective_loss(params, state.model_state, relabelled, jax.random.key(1), teacher, hp,
                          objective=objective)[0] == loss
