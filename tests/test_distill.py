"""Distillation in your own loop: the README's examples run, and their step is the engine's step."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses, methods
from kdjax.data import Split, gather_batch
from kdjax.distill import Distiller, distillation_loss
from kdjax.engine import Member, ProgramSpec, init_states, program_step, stack_hyperparameters
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.parallel import batch_mesh
from kdjax.teacher import Teacher
from kdjax.train import build_objective

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> list[str]:
    section = README.read_text().split("## Your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_readmes_own_loop_examples_run():
    blocks = _readme_blocks()
    assert len(blocks) == 2 and all(len(block.splitlines()) <= 22 for block in blocks)
    scope: dict = {}
    exec(compile(blocks[0], "README linen", "exec"), scope)
    metrics = scope["metrics"]
    assert bool(metrics["finite"]) and float(metrics["loss"]) > 0
    stats = jax.tree.leaves(scope["state"].student.model_state["model"])
    assert stats  # the student's BatchNorm statistics train; the teacher's stay as given
    jax.tree.map(np.testing.assert_array_equal, scope["state"].teacher.state, scope["teacher_variables"][1])
    exec(compile(blocks[1], "README nnx", "exec"), scope)
    assert bool(scope["metrics"]["finite"]) and np.isfinite(float(scope["loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", [("kd", {"temperature": 4.0}), ("hint", {}), ("dkd", {"beta": 8.0}),
                                             ("ce", {})])
def test_a_distillers_step_is_the_engines_step_for_the_same_batch(name, overrides):
    """One member of the engine's program step (seed 3) and the distiller from key(3), on the same batch: the
    same loss and the same parameters after the update (SGD: Adam's first step, g / (|g| + eps), would turn
    float rounding of gradients near eps into visible differences)."""
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 16).astype(np.int32))
    student, teacher_network = tutorial_student(), tutorial_teacher()
    teacher = Teacher(teacher_network, *teacher_network.init(jax.random.key(5)))
    method = methods.get(name)
    objective = build_objective(method, student, teacher_network if method.needs_teacher else None)
    member = Member.of(name, 3, **overrides)
    spec = ProgramSpec(objective, 16, 16, "none", True, batch_mesh(1))
    order = jnp.arange(16, dtype=jnp.int32)[None]
    states, metrics = program_step(init_states(objective, [3], optax.sgd(0.1)), order, jnp.int32(0),
                                   jnp.int32(0), split.arrays(), teacher if method.needs_teacher else None,
                                   jnp.stack([jax.random.key(0)]), jnp.stack([jax.random.fold_in(jax.random.key(3), 2)]),
                                   stack_hyperparameters([member]), spec=spec)
    distiller = Distiller(student, teacher_network, name, optax.sgd(0.1), **overrides)
    state = distiller.init(jax.random.key(3), teacher.variables)
    batch = gather_batch(split.arrays(), order[0], 0, batch_size=16, num_examples=16)
    state, own = jax.jit(distiller.step)(state, batch)
    np.testing.assert_allclose(own["loss"], metrics["loss"][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[0], rtol=1e-5, atol=1e-8),
                 state.student.params, states.params)


def test_the_loss_alone_is_the_weighted_sum_of_its_terms():
    student, teacher = jax.random.normal(jax.random.key(0), (6, 10)), jax.random.normal(jax.random.key(1), (6, 10))
    labels = jnp.arange(6) % 10
    expected = 0.75 * losses.cross_entropy(student, labels) + 0.25 * losses.kd_loss(student, teacher, temperature=4.0)
    for method in ("kd", methods.get("kd")):
        value = distillation_loss(method, {"logits": student}, {"logits": teacher}, labels, temperature=4.0)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    grad = jax.grad(lambda t: distillation_loss("kd", {"logits": student}, {"logits": t}, labels))(teacher)
    assert not np.any(grad)  # the teacher is under stop_gradient
    np.testing.assert_allclose(distillation_loss("ce", {"logits": student}, None, labels),
                               losses.cross_entropy(student, labels), rtol=1e-6)


def test_bad_distiller_input_is_refused_in_one_line():
    student = tutorial_student()
    with pytest.raises(ValueError, match="method 'kd' has no hyperparameter 'temprature'"):
        Distiller(student, tutorial_teacher(), "kd", optax.adam(1e-3), temprature=4.0)
    with pytest.raises(ValueError, match="unknown method 'kdd'"):
        Distiller(student, tutorial_teacher(), "kdd", optax.adam(1e-3))
    with pytest.raises(TypeError, match="must be a kdjax Network"):
        Distiller(student, object(), "kd", optax.adam(1e-3))
    with pytest.raises(ValueError, match="needs a teacher network"):
        Distiller(student, None, "kd", optax.adam(1e-3))
    with pytest.raises(ValueError, match=r"kd needs the teacher's \(params, state\)"):
        Distiller(student, tutorial_teacher(), "kd", optax.adam(1e-3)).init(jax.random.key(0))
