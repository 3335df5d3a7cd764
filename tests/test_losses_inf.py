"""`-inf` logits (padded or filtered vocabularies, top-k teachers) and the β edges of the generalised JSD.

References are float64 NumPy sums over each distribution's support, the definitions themselves: a class that a
distribution gives probability 0 contributes 0 to its side of a divergence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(2, 3, 11)).astype(np.float32)  # [batch, time, vocab]
TEACHER = RNG.normal(size=(2, 3, 11)).astype(np.float32)
TEACHER[..., 8:] = -np.inf  # a padded vocabulary tail
TEACHER[0, 1, :4] = -np.inf  # a top-k filtered position
MASK = np.array([[True, True, False], [True, True, True]])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = np.max(x, axis=-1, keepdims=True)
    return x - top - np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))


def _kl(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (np.where(p > 0, log_p, 0) - np.where(p > 0, log_q, 0)), 0.0)
    return terms.sum(-1)


def _mean(values: np.ndarray) -> float:
    return float(values[MASK].mean())


def test_kd_loss_ignores_classes_the_teacher_rules_out():
    temperature = 2.0
    expected = _mean(_kl(_log_softmax(TEACHER / temperature), _log_softmax(STUDENT / temperature))) * temperature**2
    value = losses.kd_loss(STUDENT, TEACHER, temperature=temperature, where=MASK)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    grads = jax.grad(lambda s, t: losses.kd_loss(s, t, temperature=temperature, where=MASK), argnums=(0, 1))(
        jnp.asarray(STUDENT), jnp.asarray(TEACHER))
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[1][..., 8:], 0.0)  # no gradient into -inf logits


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("traced", [False, True])
def test_generalized_jsd_is_finite_with_a_filtered_teacher(beta, traced):
    log_s, log_t = _log_softmax(STUDENT), _log_softmax(TEACHER)
    if beta == 0.0:
        expected = _kl(log_t, log_s)
    else:
        log_m = np.logaddexp(log_s + np.log1p(-beta), log_t + np.log(beta))
        expected = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)

    def loss(student, teacher, b):
        return losses.generalized_jsd_loss(student, teacher, beta=b, where=MASK)

    fn = jax.jit(loss) if traced else (lambda s, t, b: loss(s, t, float(b)))
    value = fn(jnp.asarray(STUDENT), jnp.asarray(TEACHER), beta)
    np.testing.assert_allclose(value, _mean(expected), rtol=1e-5)
    grads = jax.grad(fn, argnums=(0, 1))(jnp.asarray(STUDENT), jnp.asarray(TEACHER), beta)
    assert all(np.all(np.isfinite(g)) for g in grads), (beta, traced)


@pytest.mark.parametrize("traced", [False, True])
def test_beta_edges_are_exactly_the_two_kls(traced):
    student, teacher = RNG.normal(size=(4, 7)).astype(np.float32), RNG.normal(size=(4, 7)).astype(np.float32)
    log_s, log_t = _log_softmax(student), _log_softmax(teacher)

    def loss(b):
        return losses.generalized_jsd_loss(student, teacher, beta=b)

    fn = jax.jit(loss) if traced else loss
    np.testing.assert_allclose(fn(0.0), _kl(log_t, log_s).mean(), rtol=1e-6)
    np.testing.assert_allclose(fn(1.0), _kl(log_s, log_t).mean(), rtol=1e-6)


def test_a_student_that_rules_out_a_class_the_teacher_keeps_gives_infinity_not_nan():
    student = STUDENT.copy()
    student[1, 2, 0] = -np.inf  # the teacher gives class 0 probability there: KL(t || s) is infinite
    value = losses.kd_loss(student, TEACHER, where=MASK)
    assert np.isposinf(value)
    both = STUDENT.copy()
    both[..., 8:] = -np.inf  # ruling out only what the teacher rules out costs nothing
    assert np.isfinite(losses.kd_loss(both, TEACHER, where=MASK))


def test_soft_cross_entropy_skips_zero_probability_classes_at_minus_infinity():
    logits = STUDENT[1].copy()
    logits[:, -2:] = -np.inf
    targets = np.exp(_log_softmax(TEACHER[1])).astype(np.float32)  # zero on the padded tail
    targets[:, -2:] = 0.0
    targets /= targets.sum(-1, keepdims=True)
    expected = -(targets * np.where(targets > 0, _log_softmax(logits), 0.0)).sum(-1).mean()
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets), expected, rtol=1e-5)
    grad = jax.grad(lambda z: losses.soft_cross_entropy(z, targets))(jnp.asarray(logits))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("loss", ["kd_loss", "generalized_jsd_loss"])
def test_bf16_logits_compute_in_float32_and_return_gradients_in_their_own_dtype(loss):
    """bf16 in: the value is float32 (softmaxes run in float32), the gradient comes back bf16 (JAX gives a
    gradient the input's dtype; cast the logits to float32 first for float32 gradients)."""
    student = jnp.asarray(STUDENT * 30, jnp.bfloat16)  # extreme logits
    teacher = jnp.asarray(TEACHER * 30, jnp.bfloat16)
    fn = getattr(losses, loss)
    value, grad = jax.value_and_grad(lambda s: fn(s, teacher, where=MASK))(student)
    reference, grad32 = jax.value_and_grad(lambda s: fn(s, teacher.astype(jnp.float32), where=MASK))(
        student.astype(jnp.float32))
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16 and grad32.dtype == jnp.float32
    np.testing.assert_allclose(value, reference, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    np.testing.assert_allclose(np.asarray(grad, np.float32), grad32, rtol=1e-2, atol=1e-2 * np.abs(grad32).max())
