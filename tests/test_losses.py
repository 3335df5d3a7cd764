"""Loss functions against closed forms, edge cases and JAX transformations.

Values against the tutorial's PyTorch code are in test_parity.py; these check what a
closed form or an invariant can decide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses


def _logits(seed: int, shape=(6, 10)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_cross_entropy_closed_form():
    logits, labels = _logits(0), np.array([0, 3, 9, 1, 1, 5])
    expected = -np.mean(_log_softmax(logits)[np.arange(6), labels])
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_kd_loss_closed_form():
    student, teacher, temperature = _logits(1), _logits(2), 4.0
    log_q, log_p = _log_softmax(student / temperature), _log_softmax(teacher / temperature)
    expected = np.sum(np.exp(log_p) * (log_p - log_q)) / 6 * temperature**2
    np.testing.assert_allclose(losses.kd_loss(student, teacher, temperature=temperature), expected, rtol=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_shift_invariant():
    logits = _logits(3)
    np.testing.assert_allclose(losses.kd_loss(logits, logits), 0.0, atol=1e-6)
    shifted = losses.kd_loss(logits + 7.0, _logits(4) - 3.0)
    np.testing.assert_allclose(shifted, losses.kd_loss(logits, _logits(4)), rtol=1e-5)


def test_kd_loss_survives_a_saturated_teacher():
    # softmax([1000, 0, ...] / 2) underflows to an exact one-hot in float32, so the
    # tutorial's p * (log p - log q) evaluates 0 * (-inf - log q) = NaN in the other classes.
    teacher = np.zeros((2, 10), np.float32)
    teacher[:, 0] = 1000.0
    student = _logits(5, (2, 10))
    p = jax.nn.softmax(teacher / 2.0)
    assert float(p[0, 1]) == 0.0
    naive = jnp.sum(p * (jnp.log(p) - jax.nn.log_softmax(student / 2.0))) / 2 * 4.0
    assert jnp.isnan(naive)

    value, grad = jax.value_and_grad(losses.kd_loss)(jnp.asarray(student), teacher, temperature=2.0)
    expected = -np.mean(_log_softmax(student / 2.0)[:, 0]) * 4.0  # KL to a one-hot is -log q_0
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_kd_loss_rejects_non_positive_temperature():
    for bad in (0.0, -1.0, np.float32(0.0), jnp.asarray(-2.0), float("nan")):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            losses.kd_loss(_logits(0), _logits(1), temperature=bad)


def _torch_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """ATen's cosine_embedding_loss with target 1, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    eps = 1e-12
    cos = (a * b).sum(-1) / np.sqrt(((a * a).sum(-1) + eps) * ((b * b).sum(-1) + eps))
    return float(np.mean(1.0 - cos))


def test_cosine_loss_closed_form_and_scale_invariance():
    a, b = _logits(6, (5, 32)), _logits(7, (5, 32))
    np.testing.assert_allclose(losses.cosine_loss(a, b), _torch_cosine(a, b), rtol=1e-5)
    np.testing.assert_allclose(losses.cosine_loss(3.0 * a, 0.5 * b), losses.cosine_loss(a, b), rtol=1e-5)
    np.testing.assert_allclose(losses.cosine_loss(a, a), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.cosine_loss(a, -a), 2.0, rtol=1e-6)


@pytest.mark.parametrize("zero_side", ["student", "teacher", "both"])
def test_cosine_loss_zero_rows_give_cos_zero_with_finite_gradients(zero_side):
    a, b = _logits(8, (3, 16)), _logits(9, (3, 16))
    if zero_side in ("student", "both"):
        a[1] = 0.0
    if zero_side in ("teacher", "both"):
        b[1] = 0.0
    value, grad = jax.value_and_grad(losses.cosine_loss)(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(value, _torch_cosine(a, b), rtol=1e-5)
    row = losses.cosine_loss(a[1:2], b[1:2])
    np.testing.assert_allclose(row, 1.0, rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_hint_loss_closed_form():
    a, b = _logits(10, (2, 8, 8, 32)), _logits(11, (2, 8, 8, 32))
    np.testing.assert_allclose(losses.hint_loss(a, b), np.mean((a - b).astype(np.float64) ** 2), rtol=1e-5)


def test_avg_pool_pairs_averages_adjacent_entries():
    hidden = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(losses.avg_pool_pairs(hidden), [[0.5, 2.5, 4.5], [6.5, 8.5, 10.5]])
    with pytest.raises(ValueError, match="even"):
        losses.avg_pool_pairs(np.ones((2, 5), np.float32))


PAIRED = {
    "kd_loss": (losses.kd_loss, (6, 10)),
    "cosine_loss": (losses.cosine_loss, (6, 24)),
    "hint_loss": (losses.hint_loss, (6, 4, 4, 3)),
}


@pytest.mark.parametrize("name", PAIRED)
def test_paired_losses_reject_mismatched_shapes(name):
    fn, shape = PAIRED[name]
    wrong = shape[:-1] + (shape[-1] + 2,)
    with pytest.raises(ValueError, match="shapes must match exactly"):
        fn(np.ones(shape, np.float32), np.ones(wrong, np.float32))
    with pytest.raises(ValueError, match="shapes must match exactly"):
        fn(np.ones(shape, np.float32), np.ones((1,) + shape[1:], np.float32))  # would broadcast


def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        losses.cross_entropy(_logits(0), np.zeros((5,), np.int32))
    with pytest.raises(TypeError, match="integers"):
        losses.cross_entropy(_logits(0), np.zeros((6,), np.float32))


def _all_losses():
    yield "cross_entropy", losses.cross_entropy, (_logits(12), np.arange(6) % 10)
    for name, (fn, shape) in PAIRED.items():
        yield name, fn, (_logits(13, shape), _logits(14, shape))


@pytest.mark.parametrize("name,fn,args", list(_all_losses()), ids=lambda v: v if isinstance(v, str) else "")
def test_losses_under_jit_and_vmap(name, fn, args):
    eager = fn(*args)
    np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-6)
    stacked = [np.stack([a, a[::-1]]) for a in args]  # a leading axis of two batches
    batched = jax.vmap(fn)(*stacked)
    expected = [fn(*[s[i] for s in stacked]) for i in range(2)]
    np.testing.assert_allclose(batched, expected, rtol=1e-6)


@pytest.mark.parametrize("name,fn,args", list(_all_losses()), ids=lambda v: v if isinstance(v, str) else "")
def test_loss_gradients_match_finite_differences(name, fn, args):
    with jax.enable_x64(True):
        first = jnp.asarray(args[0], jnp.float64)
        rest = [jnp.asarray(a) if name == "cross_entropy" else jnp.asarray(a, jnp.float64) for a in args[1:]]
        check_grads(lambda x: fn(x, *rest), (first,), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,fn,args", list(_all_losses()), ids=lambda v: v if isinstance(v, str) else "")
def test_masked_examples_contribute_nothing(name, fn, args):
    where = np.array([True, True, False, True, False, True])
    garbage = [np.array(a) for a in args]
    if name != "cross_entropy":
        garbage[0][~where] = np.nan  # even NaN in a padded row must not leak
        garbage[1][~where] = 1e30
    value, grad = jax.value_and_grad(lambda x: fn(x, *garbage[1:], where=where))(jnp.asarray(garbage[0]))
    np.testing.assert_allclose(value, fn(*[a[where] for a in args]), rtol=1e-6)
    assert np.all(np.asarray(grad)[~where] == 0.0)
    assert np.all(np.isfinite(grad))
