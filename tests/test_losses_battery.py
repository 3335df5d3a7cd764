"""The standard battery for every loss: jit, vmap, finite differences, shapes, masks, reductions, dtypes, edge cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses


def _x(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


LABELS = np.arange(6, dtype=np.int32) % 10
# name -> (function of (student, teacher, **kw), student shape, teacher shape, per-position reduction available)
LOSSES = {
    "kd_loss": (lambda s, t, **kw: losses.kd_loss(s, t, temperature=2.0, **kw), (6, 10), (6, 10), True),
    "dkd_loss": (lambda s, t, **kw: losses.dkd_loss(s, t, LABELS, **kw), (6, 10), (6, 10), True),
    "dist_loss": (lambda s, t, **kw: losses.dist_loss(s, t, temperature=2.0, **kw), (6, 10), (6, 10), False),
    "generalized_jsd_loss": (lambda s, t, **kw: losses.generalized_jsd_loss(s, t, beta=0.3, **kw), (6, 10), (6, 10),
                             True),
    "soft_cross_entropy": (lambda s, t, **kw: losses.soft_cross_entropy(s, jax.nn.softmax(t), **kw), (6, 10),
                           (6, 10), True),
    "cosine_loss": (losses.cosine_loss, (6, 16), (6, 16), True),
    "hint_loss": (losses.hint_loss, (6, 2, 2, 3), (6, 2, 2, 3), True),
    "attention_transfer_loss": (losses.attention_transfer_loss, (6, 3, 3, 2), (6, 3, 3, 4), True),
    "rkd_distance_loss": (losses.rkd_distance_loss, (6, 5), (6, 7), False),
    "rkd_angle_loss": (losses.rkd_angle_loss, (6, 5), (6, 7), False),
    "pkt_loss": (losses.pkt_loss, (6, 5), (6, 7), False),
    "similarity_preserving_loss": (losses.similarity_preserving_loss, (6, 5), (6, 7), False),
}
NAMES = list(LOSSES)


def _args(name, seed=0):
    _, s_shape, t_shape, _ = LOSSES[name]
    return _x(seed, s_shape, 2.0), _x(seed + 1, t_shape, 2.0)


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap_agree_with_eager(name):
    fn = LOSSES[name][0]
    s, t = _args(name)
    eager = fn(s, t)
    np.testing.assert_allclose(jax.jit(fn)(s, t), eager, rtol=1e-6)
    stacked_s, stacked_t = np.stack([s, s[::-1]]), np.stack([t, t[::-1]])
    np.testing.assert_allclose(jax.vmap(fn)(stacked_s, stacked_t), [fn(s, t), fn(s[::-1], t[::-1])], rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    fn = LOSSES[name][0]
    s, t = _args(name, seed=3)
    with jax.enable_x64(True):
        teacher = jnp.asarray(t, jnp.float64)
        check_grads(lambda x: fn(x, teacher), (jnp.asarray(s, jnp.float64),), order=2, modes=["rev"],
                    atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_masked_rows_are_left_out_even_when_they_hold_nan(name):
    fn = LOSSES[name][0]
    s, t = _args(name, seed=5)
    where = np.array([True, True, False, True, False, True])
    if name == "dkd_loss":
        fn = lambda a, b, **kw: losses.dkd_loss(a, b, LABELS if a.shape[0] == 6 else LABELS[where], **kw)  # noqa: E731
    garbage_s, garbage_t = s.copy(), t.copy()
    garbage_s[~where], garbage_t[~where] = np.nan, 1e30
    value, grad = jax.value_and_grad(lambda x: fn(x, garbage_t, where=where))(jnp.asarray(garbage_s))
    np.testing.assert_allclose(value, fn(s[where], t[where]), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(grad)[~where] == 0.0) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES[n][3]])
def test_reduction_none_gives_per_position_values_whose_masked_mean_is_the_loss(name):
    fn = LOSSES[name][0]
    s, t = _args(name, seed=7)
    where = np.array([True, False, True, True, True, False])
    per_position = fn(s, t, where=where, reduction="none")
    assert per_position.shape == (6,) and np.all(np.asarray(per_position)[~where] == 0)
    np.testing.assert_allclose(per_position.sum() / where.sum(), fn(s, t, where=where), rtol=1e-6)


@pytest.mark.parametrize("name", ["kd_loss", "dkd_loss", "generalized_jsd_loss", "soft_cross_entropy"])
def test_sequence_logits_with_padding_equal_the_flattened_included_positions(name):
    fn = LOSSES[name][0]
    rng = np.random.default_rng(11)
    s, t = _x(11, (2, 3, 10), 2.0), _x(12, (2, 3, 10), 2.0)
    where = rng.random((2, 3)) < 0.6
    where[0, 0], where[1, 2] = True, False
    if name == "dkd_loss":
        labels = np.arange(6, dtype=np.int32).reshape(2, 3) % 10
        value = losses.dkd_loss(s, t, labels, where=where)
        expected = losses.dkd_loss(s[where], t[where], labels[where])
    else:
        value, expected = fn(s, t, where=where), fn(s[where], t[where])
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_class_axis_can_be_moved():
    s, t = _x(1, (4, 10, 3)), _x(2, (4, 10, 3))
    np.testing.assert_allclose(losses.kd_loss(s, t, axis=1), losses.kd_loss(np.moveaxis(s, 1, -1),
                                                                               np.moveaxis(t, 1, -1)), rtol=1e-6)


def test_bfloat16_logits_are_computed_in_float32():
    s, t = _x(1, (4, 32000), 3.0), _x(2, (4, 32000), 3.0)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    value = losses.kd_loss(s16, t16)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, losses.kd_loss(np.asarray(s16, np.float32), np.asarray(t16, np.float32)),
                               rtol=1e-6)


def test_a_float_mask_and_wrong_shapes_are_refused():
    s, t = _x(1, (6, 10)), _x(2, (6, 10))
    with pytest.raises(TypeError, match="`where` must be boolean, got float32"):
        losses.kd_loss(s, t, where=np.full((6,), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"`where` must have shape \(6,\)"):
        losses.kd_loss(s, t, where=np.ones((6, 10), bool))
    with pytest.raises(ValueError, match="shapes must match exactly"):
        losses.kd_loss(s, t[:1])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        losses.kd_loss(s, t, reduction="sum")
    with pytest.raises(ValueError, match="equal height and width"):
        losses.attention_transfer_loss(_x(1, (2, 4, 4, 3)), _x(1, (2, 2, 2, 3)))
    with pytest.raises(ValueError, match="beta must be in"):
        losses.generalized_jsd_loss(s, t, beta=1.5)


def test_a_traced_temperature_works_and_concrete_bad_ones_are_refused():
    s, t = _x(1, (6, 10)), _x(2, (6, 10))
    traced = jax.jit(lambda temperature: losses.kd_loss(s, t, temperature=temperature))(4.0)
    np.testing.assert_allclose(traced, losses.kd_loss(s, t, temperature=4.0), rtol=1e-6)
    for fn in (losses.dkd_loss, losses.dist_loss, losses.generalized_jsd_loss):
        args = (s, t, LABELS) if fn is losses.dkd_loss else (s, t)
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            fn(*args, temperature=np.float32(0.0))


def test_generalized_jsd_limits_are_the_two_kls_and_a_traced_beta_selects_them():
    s, t = _x(1, (6, 10), 2.0), _x(2, (6, 10), 2.0)
    forward = losses.kd_loss(s, t, temperature=1.0)  # KL(teacher || student)
    reverse = losses.kd_loss(t, s, temperature=1.0)
    np.testing.assert_allclose(losses.generalized_jsd_loss(s, t, beta=0.0), forward, rtol=1e-6)
    np.testing.assert_allclose(losses.generalized_jsd_loss(s, t, beta=1.0), reverse, rtol=1e-6)
    traced = jax.jit(lambda b: losses.generalized_jsd_loss(s, t, beta=b))
    np.testing.assert_allclose(traced(0.0), forward, rtol=1e-6)
    np.testing.assert_allclose(traced(1.0), reverse, rtol=1e-6)
    for beta in (0.0, 1.0):  # the unselected mixture branch must not leak NaN into the gradient
        grad = jax.jit(jax.grad(lambda x, b: losses.generalized_jsd_loss(x, t, beta=b)))(jnp.asarray(s), beta)
        assert np.all(np.isfinite(grad))


def test_dkd_stays_finite_for_a_student_certain_of_the_true_class():
    s, t = _x(1, (4, 10)), _x(2, (4, 10))
    labels = np.array([0, 3, 5, 9], np.int32)
    s[np.arange(4), labels] = 500.0  # softmax(s / 4) is exactly one-hot in float32: log(0) in mdistiller
    value, grad = jax.value_and_grad(lambda x: losses.dkd_loss(x, t, labels))(jnp.asarray(s))
    assert np.isfinite(value) and value > 0 and np.all(np.isfinite(grad))


@pytest.mark.slow
def test_rkd_angle_with_duplicate_rows_and_batch_of_two():
    x = _x(1, (5, 6))
    x[3] = x[1]  # a zero difference vector
    value, grad = jax.value_and_grad(losses.rkd_angle_loss)(jnp.asarray(x), _x(2, (5, 4)))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    pair = jax.value_and_grad(losses.rkd_angle_loss)(jnp.asarray(_x(3, (2, 6))), _x(4, (2, 4)))
    assert abs(float(pair[0])) < 1e-12 and np.all(np.isfinite(pair[1]))  # two points: every angle is 0 or 1 for both


@pytest.mark.slow
def test_rkd_angle_agrees_with_the_explicit_differences_on_offset_relu_features():
    """The Gram-matrix form against the reference's `[B, B, features]` form, where cancellation would show."""
    def explicit(student, teacher):
        def angles(x):
            d = x[None] - x[:, None]
            squared = jnp.sum(d * d, -1, keepdims=True)
            norm = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
            d = d / jnp.maximum(norm, 1e-12)
            return jnp.einsum("ijf,ikf->ijk", d, d)
        diff = jnp.abs(angles(student) - angles(teacher))
        return jnp.mean(jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5))

    s = np.maximum(_x(1, (32, 256)), 0) + 20.0  # large common offset: |x|² far above the distances
    t = np.maximum(_x(2, (32, 512)), 0) + 20.0
    value, grad = jax.value_and_grad(losses.rkd_angle_loss)(jnp.asarray(s), jnp.asarray(t))
    with jax.enable_x64(True):
        expected, expected_grad = jax.value_and_grad(explicit)(jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-3, atol=1e-3 * np.abs(expected_grad).max())

    s[5] = s[9]  # F.normalize's clamp gives the reference a 1e12-scaled gradient here; kdjax gives none
    value, grad = jax.value_and_grad(losses.rkd_angle_loss)(jnp.asarray(s), jnp.asarray(t))
    with jax.enable_x64(True):
        expected = explicit(jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64))
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    assert np.abs(grad).max() < 10 * np.abs(expected_grad).max()


@pytest.mark.parametrize("name", ["pkt_loss", "similarity_preserving_loss", "attention_transfer_loss",
                                  "rkd_distance_loss", "cosine_loss"])
def test_all_zero_rows_give_finite_values_and_gradients(name):
    fn = LOSSES[name][0]
    s, t = _args(name, seed=9)
    s[2] = 0.0
    t[4] = 0.0
    value, grad = jax.value_and_grad(lambda x: fn(x, t))(jnp.asarray(s))
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_standardize_logits_uses_the_unbiased_std_and_is_shift_and_scale_invariant():
    z = _x(1, (3, 10), 4.0)
    expected = (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))
    np.testing.assert_allclose(losses.standardize_logits(z), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses.standardize_logits(3 * z + 7), losses.standardize_logits(z), rtol=1e-4,
                               atol=1e-5)


def test_label_smoothing_matches_the_smoothed_target():
    z = _x(1, (6, 10), 2.0)
    smoothed = 0.9 * jax.nn.one_hot(LABELS, 10) + 0.1 / 10
    np.testing.assert_allclose(losses.cross_entropy(z, LABELS, label_smoothing=0.1),
                               losses.soft_cross_entropy(z, smoothed), rtol=1e-6)
