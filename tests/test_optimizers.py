"""The optimisers against PyTorch's (`tests/reference/make_optimizer_reference.py`), the schedules against their
definitions."""

from __future__ import annotations

import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.engine import Settings
from kdjax.optimizers import learning_rate_schedule, make_optimizer

REFERENCE = np.load(pathlib.Path(__file__).parent / "reference" / "optimizer_reference.npz")
CASES = {
    "sgd_momentum_wd": dict(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov_wd": dict(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    "sgd_plain_wd": dict(optimizer="sgd", learning_rate=0.05, momentum=0.0, weight_decay=1e-2),
    "adam_wd": dict(optimizer="adam", learning_rate=1e-2, weight_decay=1e-2),
}


@pytest.mark.parametrize("case", CASES)
def test_three_steps_match_pytorch(case):
    """Weight decay is PyTorch's coupled form: with it, SGD and Adam land where torch.optim's do (rtol 1e-5)."""
    tx = make_optimizer(Settings(**CASES[case]), steps_per_epoch=10)
    params = {"kernel": jnp.asarray(REFERENCE["weight"]).T, "bias": jnp.asarray(REFERENCE["bias"])}
    x, y = jnp.asarray(REFERENCE["inputs"]), jnp.asarray(REFERENCE["targets"])
    state = tx.init(params)
    for step in range(3):
        grads = jax.grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["kernel"].T, REFERENCE[f"{case}/{step}/weight"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(params["bias"], REFERENCE[f"{case}/{step}/bias"], rtol=1e-5, atol=1e-7)


def test_decoupled_decay_would_differ():
    """The check above can fail: AdamW's decoupled decay lands elsewhere."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([0.1, -0.2, 0.3])}
    coupled = make_optimizer(Settings(optimizer="adam", learning_rate=0.1, weight_decay=0.5), 1)
    decoupled = optax.adamw(0.1, weight_decay=0.5)
    a = coupled.update(grads, coupled.init(params), params)[0]["w"]
    b = decoupled.update(grads, decoupled.init(params), params)[0]["w"]
    assert not np.allclose(a, b)


def test_step_schedule_decays_at_each_milestone_epoch():
    rate = learning_rate_schedule(0.05, schedule="step", steps_per_epoch=10, milestones=(150, 180, 210))
    for epoch, expected in ((0, 0.05), (149, 0.05), (150, 0.005), (179, 0.005), (180, 5e-4), (210, 5e-5), (239, 5e-5)):
        for step in (epoch * 10, epoch * 10 + 9):
            np.testing.assert_allclose(rate(step), expected, rtol=1e-6, err_msg=f"epoch {epoch}, step {step}")


def test_cosine_schedule_follows_its_definition():
    rate = learning_rate_schedule(0.1, schedule="cosine", epochs=4, steps_per_epoch=25)
    for step in (0, 1, 37, 50, 99, 100):
        expected = 0.1 * 0.5 * (1 + np.cos(np.pi * min(step, 100) / 100))
        np.testing.assert_allclose(rate(step), expected, rtol=1e-5, atol=1e-7 * 0.1)  # float32 cos near 0


def test_warmup_scales_the_schedule_linearly():
    rate = learning_rate_schedule(0.2, schedule="step", steps_per_epoch=10, milestones=(3,), warmup_epochs=2)
    for step, expected in ((0, 0.2 / 20), (9, 0.2 / 2), (19, 0.2), (25, 0.2), (30, 0.02)):
        np.testing.assert_allclose(rate(step), expected, rtol=1e-6)
    assert learning_rate_schedule(0.1) == 0.1  # constant: a float, so Adam's state is what it always was


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="schedule must be one of constant, step, cosine"):
        learning_rate_schedule(0.1, schedule="linear")
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        make_optimizer(types.SimpleNamespace(optimizer="lamb"), 1)
