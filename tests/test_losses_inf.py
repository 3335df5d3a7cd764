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


# --- a padded vocabulary: both sides hold -inf at the same classes --------------------------------------------

VALID = 7  # real classes of a 10-entry vocabulary; 7..9 are padding
PAD_STUDENT = RNG.normal(size=(4, 10))
PAD_TEACHER = np.where(np.arange(10) < VALID, RNG.normal(size=(4, 10)), -np.inf)


def _gjsd(student: np.ndarray, teacher: np.ndarray, beta: float) -> float:
    """Float64 GKD divergence (TRL's definition) over each distribution's support, mean over rows."""
    log_s, log_t = _log_softmax(student), _log_softmax(teacher)
    if beta == 0.0:
        return float(_kl(log_t, log_s).mean())
    if beta == 1.0:
        return float(_kl(log_s, log_t).mean())
    log_m = np.logaddexp(log_s + np.log1p(-beta), log_t + np.log(beta))
    return float((beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)).mean())


def _finite_differences(f, x: np.ndarray, columns: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of float64 `f` in the first `columns` entries of each row of `x`; 0 elsewhere."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape[0], columns):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (f(up) - f(down)) / (2 * eps)
    return grad


def _padded(x):
    return jnp.where(jnp.arange(10) < VALID, x, -jnp.inf)  # how a model masks its padding


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("traced", [False, True])
def test_a_padded_vocabulary_on_both_sides_gives_finite_gradients_equal_to_the_unpadded_ones(beta, traced):
    """The regression: at β strictly inside (0, 1) every gradient entry was NaN, the real classes' included."""
    def loss(x, b):
        return losses.generalized_jsd_loss(_padded(x), PAD_TEACHER.astype(np.float32), beta=b)

    fn = jax.jit(loss) if traced else (lambda x, b: loss(x, float(b)))
    student = PAD_STUDENT.astype(np.float32)
    value, grad = jax.value_and_grad(fn)(jnp.asarray(student), beta)
    real = lambda s: _gjsd(s[:, :VALID], PAD_TEACHER[:, :VALID], beta)  # noqa: E731 (the unpadded problem)
    np.testing.assert_allclose(value, real(PAD_STUDENT), rtol=1e-5)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, VALID:] == 0)
    np.testing.assert_allclose(grad, _finite_differences(real, PAD_STUDENT, VALID), atol=2e-6)


@pytest.mark.parametrize("beta", [0.3, 1.0])
@pytest.mark.parametrize("traced", [False, True])
def test_a_student_only_minus_infinity_is_finite_where_the_divergence_is(beta, traced):
    """The student rules out classes the teacher keeps: finite for β > 0 (the mixture covers them), with zero
    gradient into the -inf logits."""
    teacher = RNG.normal(size=(4, 10))

    def loss(x, b):
        return losses.generalized_jsd_loss(_padded(x), teacher.astype(np.float32), beta=b)

    fn = jax.jit(loss) if traced else (lambda x, b: loss(x, float(b)))
    value, grad = jax.value_and_grad(fn)(jnp.asarray(PAD_STUDENT, jnp.float32), beta)
    student = lambda s: np.where(np.arange(10) < VALID, s, -np.inf)  # noqa: E731
    np.testing.assert_allclose(value, _gjsd(student(PAD_STUDENT), teacher, beta), rtol=1e-5)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, VALID:] == 0)
    np.testing.assert_allclose(grad, _finite_differences(lambda s: _gjsd(student(s), teacher, beta), PAD_STUDENT,
                                                         VALID), atol=2e-6)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5])  # the top-k form refuses β = 1 (infinite outside the k)
def test_a_top_k_teacher_reaching_into_the_padding_keeps_gradients_finite(beta):
    """k = the whole vocabulary: the top-k loss is the dense one, padding included."""
    order = np.argsort(-PAD_TEACHER, axis=-1)
    values, indices = np.take_along_axis(PAD_TEACHER, order, -1).astype(np.float32), order.astype(np.int32)

    def loss(x):
        return losses.topk_generalized_jsd_loss(_padded(x), values, indices, beta=beta)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(PAD_STUDENT, jnp.float32))
    real = lambda s: _gjsd(s[:, :VALID], PAD_TEACHER[:, :VALID], beta)  # noqa: E731
    np.testing.assert_allclose(value, real(PAD_STUDENT), rtol=1e-5)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, VALID:] == 0)
    np.testing.assert_allclose(grad, _finite_differences(real, PAD_STUDENT, VALID), atol=2e-6)


@pytest.mark.parametrize("loss", ["cross_entropy", "kd", "gjsd"])
def test_a_fused_loss_over_a_padded_head_is_the_loss_over_the_real_vocabulary(loss):
    """`vocab_size`: the head's columns past it are padding; value and gradients equal the unpadded head's, and
    the padding columns get zero gradient."""
    rng = np.random.default_rng(3)
    hidden, teacher_hidden = rng.normal(size=(2, 5, 6)).astype(np.float32), rng.normal(size=(2, 5, 4))
    head = rng.normal(size=(6, 10)).astype(np.float32)
    teacher_head = rng.normal(size=(4, 10)).astype(np.float32)
    labels = rng.integers(0, VALID, (2, 5))
    teacher_hidden = teacher_hidden.astype(np.float32)

    def fused(h, w, vocab):
        kwargs = {"chunk_size": 4, "vocab_size": vocab} if vocab == VALID else {"chunk_size": 4}
        if loss == "cross_entropy":
            return losses.fused_cross_entropy(h, w, labels, **kwargs)
        pair = (teacher_hidden, teacher_head[:, :w.shape[1]])
        if loss == "kd":
            return losses.fused_kd_loss(h, w, *pair, labels=labels, ce_weight=0.5, **kwargs)
        return losses.fused_generalized_jsd_loss(h, w, *pair, beta=0.5, labels=labels, ce_weight=0.5, **kwargs)

    value, (d_hidden, d_head) = jax.value_and_grad(fused, argnums=(0, 1))(hidden, head, VALID)
    expected, (e_hidden, e_head) = jax.value_and_grad(fused, argnums=(0, 1))(hidden, head[:, :VALID], None)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(d_hidden, e_hidden, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_head[:, :VALID], e_head, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(d_head)[:, VALID:] == 0)
    with pytest.raises(ValueError, match=r"vocab_size must be an integer in \[1, 10\]"):
        losses.fused_cross_entropy(hidden, head, labels, vocab_size=11)
