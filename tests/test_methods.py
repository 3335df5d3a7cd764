"""Methods as data: the registry, hyperparameter resolution and checks, adding a method without touching the engine."""

from __future__ import annotations

import numpy as np
import pytest

from kdjax import losses, methods
from kdjax.engine import Member, expand_members


def test_the_tutorials_four_objectives_are_registered_with_its_weights():
    assert {"ce", "kd", "cosine", "hint"} <= set(methods.METHODS)
    assert methods.get("ce").hyperparameters == {} and not methods.get("ce").needs_teacher
    assert methods.get("kd").hyperparameters == {"ce_weight": 0.75, "aux_weight": 0.25, "temperature": 2.0}
    assert methods.get("hint").adapted == "feature_map" and methods.get("cosine").reads == ("feature_map",)


@pytest.mark.parametrize("overrides,message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": float("inf")}, "temperature must be finite"),
    ({"aux_weight": -1.0}, "aux_weight must be >= 0"),
    ({"beta": 1.0}, "method 'kd' has no hyperparameter 'beta'"),
])
def test_bad_hyperparameters_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        methods.get("kd").resolve(overrides)


def test_unknown_methods_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="unknown method 'nope'; registered: ce, kd"):
        methods.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Method("kd", "again"))


def test_members_expand_a_grid_only_over_the_methods_that_have_it():
    members = expand_members(["ce", "kd"], [0, 1], {"temperature": [1.0, 4.0]})
    assert [m.label for m in members[:2]] == ["ce[seed=0]", "ce[seed=1]"]
    assert len(members) == 2 + 4
    assert {m.hp["temperature"] for m in members if m.name == "kd"} == {1.0, 4.0}
    with pytest.raises(ValueError, match="none of ce has a hyperparameter 'temperature'"):
        expand_members(["ce"], [0], {"temperature": [1.0]})
    assert Member.of("kd", 3, temperature=4).hp == {"aux_weight": 0.25, "ce_weight": 0.75, "temperature": 4.0}


def test_a_new_method_runs_through_the_unchanged_engine(tmp_path):
    """Register a method in test code only and train it with the loop: nothing else is edited."""
    from engine_helpers import run_members

    def logit_mse(student, teacher, hp, context):
        return hp["scale"] * losses.hint_loss(student["logits"], teacher["logits"], where=context.where)

    method = methods.Method("logit_mse_test", "MSE between logits", reads=("logits",), loss=logit_mse,
                            hyperparameters={"scale": 1.0})
    methods.register(method)
    try:
        (result,) = run_members(tmp_path, [Member.of("logit_mse_test", 0, scale=2.0)], epochs=1)
        assert result.member.hp["scale"] == 2.0 and np.isfinite(result.test_loss)
    finally:
        del methods.METHODS["logit_mse_test"]


LIBRARY = ("dkd", "lskd", "dist", "at", "rkd", "pkt", "sp")


@pytest.mark.slow
def test_each_library_method_trains_the_tutorial_student_through_the_engine(tmp_path):
    from engine_helpers import run_members

    members = [Member.of(name, 0) for name in LIBRARY]
    results = run_members(tmp_path, members, epochs=1)
    assert [r.member.name for r in results] == list(LIBRARY)
    for result in results:
        assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.test_loss), result.member.label


def test_dkd_warms_up_linearly_over_its_steps():
    import jax
    import jax.numpy as jnp

    from kdjax.methods import Context

    student, teacher = jax.random.normal(jax.random.key(0), (4, 10)), jax.random.normal(jax.random.key(1), (4, 10))
    labels = jnp.arange(4)
    hp = methods.get("dkd").resolve({"warmup_steps": 10.0})
    full = losses.dkd_loss(student, teacher, labels)
    loss = methods.get("dkd").loss
    for step, factor in ((0, 0.1), (4, 0.5), (9, 1.0), (50, 1.0)):
        value = loss({"logits": student}, {"logits": teacher}, hp, Context(labels, None, jnp.int32(step)))
        np.testing.assert_allclose(value, factor * full, rtol=1e-6)


@pytest.mark.parametrize("name", LIBRARY)
def test_help_lists_the_methods_hyperparameters(name, capsys):
    from kdjax.experiments.common import run

    with pytest.raises(SystemExit):
        run(name, ["--help"])
    out = capsys.readouterr().out
    for hyperparameter in methods.get(name).hyperparameters:
        assert f"--{hyperparameter.replace('_', '-')}" in out
