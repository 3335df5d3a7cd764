"""Fused linear losses and top-k teachers: equal to the unfused losses, to Liger's and TRL's PyTorch code, and small.

The PyTorch restatements are in `tests/reference/reference_losses.py`; `make_fused_reference.py`
evaluates them in float64 into `fused_reference.npz`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REFERENCE_DIR
from fused_cases import CASES, inputs

from kdjax import losses
from kdjax.losses import fused as fused_module
from kdjax.losses.fused import default_chunk_size

RTOL, ATOL = 1e-5, 1e-6
SHAPE, D_S, D_T, VOCAB = (3, 7), 8, 12, 41  # [batch, time] tokens, hidden sizes, vocabulary


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "fused_reference.npz") as data:
        return dict(data)


def _fused_for(case, data):
    if case.reference == "liger_fused_linear_cross_entropy":
        return lambda h, w: losses.fused_cross_entropy(h, w, np.maximum(data["labels"], 0), where=data["where"],
                                                       chunk_size=8)
    where = data["where"] if case.ignored else None
    return lambda h, w: losses.fused_generalized_jsd_loss(
        h, w, data["teacher_hidden"], data["teacher_head"], beta=case.beta, temperature=case.temperature,
        labels=np.maximum(data["labels"], 0), ce_weight=case.ce_weight, distillation_weight=case.distillation_weight,
        where=where, chunk_size=8)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fused_losses_match_liger_and_trl(case, ref):
    data = inputs(case)
    value, (d_hidden, d_head) = jax.jit(jax.value_and_grad(_fused_for(case, data), argnums=(0, 1)))(
        data["student_hidden"], data["student_head"])
    np.testing.assert_allclose(value, ref[f"{case.name}/value"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_hidden, ref[f"{case.name}/student_hidden"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_head, ref[f"{case.name}/student_head"], rtol=RTOL, atol=ATOL)


def _data(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    out = {"student_hidden": rng.normal(size=SHAPE + (D_S,)), "student_head": rng.normal(size=(D_S, VOCAB)) * 0.5,
           "teacher_hidden": rng.normal(size=SHAPE + (D_T,)), "teacher_head": rng.normal(size=(D_T, VOCAB)) * 0.5}
    out = {key: value.astype(dtype) for key, value in out.items()}
    out["labels"] = rng.integers(0, VOCAB, SHAPE).astype(np.int32)
    where = rng.random(SHAPE) < 0.7
    where[0, 0], where[-1, -1] = True, False
    out["where"] = where
    return out


def _dense_topk_teacher(values, indices, vocab):
    """The teacher the top-k losses stand for: its top-k logits where they are, -inf elsewhere."""
    dense = np.full(values.shape[:-1] + (vocab,), -np.inf, np.float32)
    np.put_along_axis(dense, np.asarray(indices), np.asarray(values), axis=-1)
    return dense


def _pairs(d):
    """(fused loss of (student hidden, head), the same loss unfused) for each fused function."""
    t_logits = d["teacher_hidden"] @ d["teacher_head"]
    values, indices = jax.lax.top_k(jnp.asarray(t_logits), 6)
    dense = _dense_topk_teacher(values, indices, VOCAB)
    lab, where = d["labels"], d["where"]
    ce = functools.partial(losses.cross_entropy, labels=lab, where=where)
    return {
        "cross_entropy": (
            lambda h, w, c: losses.fused_cross_entropy(h, w, lab, label_smoothing=0.1, where=where, chunk_size=c),
            lambda h, w: losses.cross_entropy(h @ w, lab, label_smoothing=0.1, where=where)),
        "kd_with_ce": (
            lambda h, w, c: losses.fused_kd_loss(h, w, d["teacher_hidden"], d["teacher_head"], temperature=2.0,
                                                 labels=lab, ce_weight=0.25, distillation_weight=0.75, where=where,
                                                 chunk_size=c),
            lambda h, w: 0.25 * ce(h @ w) + 0.75 * losses.kd_loss(h @ w, t_logits, temperature=2.0, where=where)),
        **{f"jsd_beta{beta}": (
            lambda h, w, c, beta=beta: losses.fused_generalized_jsd_loss(
                h, w, d["teacher_hidden"], d["teacher_head"], beta=beta, temperature=1.5, where=where, chunk_size=c),
            lambda h, w, beta=beta: losses.generalized_jsd_loss(h @ w, t_logits, beta=beta, temperature=1.5,
                                                                where=where))
           for beta in (0.0, 0.3, 1.0)},
        "topk_kd_sum": (
            lambda h, w, c: losses.fused_topk_kd_loss(h, w, values, indices, temperature=2.0, where=where,
                                                      reduction="sum", chunk_size=c),
            lambda h, w: losses.kd_loss(h @ w, dense, temperature=2.0, where=where, reduction="none").sum()),
    }


@pytest.mark.parametrize("chunk_size", [1, 5, 21, 64, None])
def test_fused_equals_unfused_in_value_and_student_gradients(chunk_size):
    d = _data()
    for name, (fused, unfused) in _pairs(d).items():
        args = (d["student_hidden"], d["student_head"])
        value, grads = jax.jit(jax.value_and_grad(lambda h, w: fused(h, w, chunk_size), argnums=(0, 1)))(*args)
        expected, expected_grads = jax.jit(jax.value_and_grad(unfused, argnums=(0, 1)))(*args)
        np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL, err_msg=name)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(jax.jit(lambda h, w: fused(h, w, chunk_size))(*args), expected, rtol=RTOL,
                                   atol=ATOL, err_msg=f"{name}: value without differentiation")


def test_the_teacher_gets_no_gradient_and_excluded_tokens_none_even_when_nan():
    d = _data(1)
    d["student_hidden"][~d["where"]] = np.nan
    d["teacher_hidden"][~d["where"]] = np.inf

    def loss(sh, sw, th, tw):
        return losses.fused_kd_loss(sh, sw, th, tw, labels=d["labels"], ce_weight=0.5, where=d["where"], chunk_size=4)

    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(d["student_hidden"], d["student_head"],
                                                                  d["teacher_hidden"], d["teacher_head"])
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
    assert not np.any(grads[0][~d["where"]]) and np.any(grads[0][d["where"]])
    assert not np.any(grads[2]) and not np.any(grads[3])


def test_bf16_inputs_give_float32_values_and_bf16_gradients_within_bf16_resolution():
    """bf16 in: the logits and loss are float32, so the value equals the float32 computation on the same
    (bf16-rounded) inputs to float32 rounding; the gradients come back in bf16 and are within 1% of the
    largest float32 gradient entry (bf16 keeps 8 bits: 2^-8 = 0.4%)."""
    d32 = {key: value for key, value in _data(2).items()}
    floats = ("student_hidden", "student_head", "teacher_hidden", "teacher_head")
    d16 = {**d32, **{key: jnp.asarray(d32[key], jnp.bfloat16) for key in floats}}
    rounded = {**d32, **{key: np.asarray(d16[key], np.float32) for key in floats}}
    fused16, _ = _pairs(d16)["jsd_beta0.3"]
    _, unfused32 = _pairs(rounded)["jsd_beta0.3"]
    value, grads = jax.value_and_grad(lambda h, w: fused16(h, w, 5), argnums=(0, 1))(d16["student_hidden"],
                                                                                      d16["student_head"])
    expected, expected_grads = jax.value_and_grad(unfused32, argnums=(0, 1))(rounded["student_hidden"],
                                                                            rounded["student_head"])
    assert value.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(value, expected, rtol=RTOL)
    for got, want in zip(grads, expected_grads):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.01 * scale)


def test_a_bf16_head_taken_in_vocabulary_blocks_gives_the_same_values_and_gradients(monkeypatch):
    """On CPU a bf16 head is multiplied a block of columns at a time (no float32 copy of the whole head): with
    blocks of 16 columns (two blocks and a remainder of 9 at vocabulary 41) the value and gradients equal the
    whole-head computation, to float32 rounding."""
    d32 = _data(4)
    floats = ("student_hidden", "student_head", "teacher_hidden", "teacher_head")
    d16 = {**d32, **{key: jnp.asarray(d32[key], jnp.bfloat16) for key in floats}}
    fused16, _ = _pairs(d16)["kd_with_ce"]

    def run():
        return jax.jit(jax.value_and_grad(lambda h, w: fused16(h, w, 5), argnums=(0, 1)))(d16["student_hidden"],
                                                                                           d16["student_head"])

    whole = run()
    monkeypatch.setattr(fused_module, "CHUNK_ELEMENTS", 16 * D_T)  # the teacher's head: 16 columns; the student's: 24
    assert fused_module._vocab_block(d16["teacher_head"]) == 16
    blocked = run()
    np.testing.assert_allclose(blocked[0], whole[0], rtol=RTOL)
    for got, want in zip(blocked[1], whole[1]):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-2, atol=1e-3)


def test_no_tokens_by_vocabulary_array_in_the_fused_program():
    """XLA's own memory analysis: the fused step's temporaries stay below one float32 [tokens, vocab] array
    (the unfused step needs several)."""
    tokens, hidden, vocab = 512, 16, 4096
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    args = (spec(tokens, hidden), spec(hidden, vocab), spec(tokens, hidden), spec(hidden, vocab))
    fused = lambda sh, sw, th, tw: losses.fused_generalized_jsd_loss(sh, sw, th, tw, chunk_size=32)  # noqa: E731
    unfused = lambda sh, sw, th, tw: losses.generalized_jsd_loss(sh @ sw, th @ tw)  # noqa: E731

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    one_logits = tokens * vocab * 4
    assert temp_bytes(fused) < one_logits < temp_bytes(unfused) / 3


def test_default_chunk_bounds_the_chunk_logits():
    assert default_chunk_size(8192, 128_256) == 128 and default_chunk_size(8192, 32_000) == 512
    assert default_chunk_size(10, 32_000) == 10 and default_chunk_size(100_000, 10**9) == 8


def test_fused_losses_under_vmap_equal_the_loop():
    d = _data(3)
    fused, _ = _pairs(d)["kd_with_ce"]
    hidden = np.stack([d["student_hidden"], d["student_hidden"][::-1]])
    batched = jax.vmap(lambda h: fused(h, d["student_head"], 4))(hidden)
    np.testing.assert_allclose(batched, [fused(h, d["student_head"], 4) for h in hidden], rtol=RTOL)


def test_topk_losses_equal_the_dense_losses_with_the_rest_at_minus_inf():
    d = _data(4)
    student = d["student_hidden"] @ d["student_head"]
    teacher = d["teacher_hidden"] @ d["teacher_head"]
    for k in (1, 5, VOCAB):
        values, indices = jax.lax.top_k(jnp.asarray(teacher), k)
        dense = _dense_topk_teacher(values, indices, VOCAB)
        cases = [(lambda s: losses.topk_kd_loss(s, values, indices, temperature=3.0, where=d["where"]),
                  lambda s: losses.kd_loss(s, dense, temperature=3.0, where=d["where"]))]
        cases += [(lambda s, b=beta: losses.topk_generalized_jsd_loss(s, values, indices, beta=b, where=d["where"]),
                   lambda s, b=beta: losses.generalized_jsd_loss(s, dense, beta=b, where=d["where"]))
                  for beta in (0.0, 0.3, 0.9)]
        for topk, reference in cases:
            value, grad = jax.value_and_grad(topk)(student)
            expected, expected_grad = jax.value_and_grad(reference)(student)
            np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL, err_msg=f"k={k}")
            np.testing.assert_allclose(grad, expected_grad, rtol=RTOL, atol=ATOL, err_msg=f"k={k}")
    values, indices = jax.lax.top_k(jnp.asarray(teacher), VOCAB)
    np.testing.assert_allclose(losses.topk_kd_loss(student, values, indices), losses.kd_loss(student, teacher),
                               rtol=RTOL)


def test_a_filtered_top_k_teacher_with_minus_inf_entries_is_finite():
    d = _data(5)
    student = d["student_hidden"] @ d["student_head"]
    values, indices = jax.lax.top_k(jnp.asarray(d["teacher_hidden"] @ d["teacher_head"]), 4)
    values = values.at[..., 2:].set(-jnp.inf)  # a top-p filter kept two of the four
    for loss in (lambda s: losses.topk_kd_loss(s, values, indices),
                 lambda s: losses.topk_generalized_jsd_loss(s, values, indices, beta=0.5)):
        value, grad = jax.value_and_grad(loss)(student)
        assert np.isfinite(value) and np.isfinite(grad).all()


@pytest.mark.parametrize("call, message", [
    (lambda d: losses.fused_kd_loss(d["student_hidden"], d["student_head"], d["teacher_hidden"],
                                    np.zeros((D_T, VOCAB + 3), np.float32)), r"teacher_head\[:, :41\]"),
    (lambda d: losses.fused_kd_loss(d["student_hidden"], d["student_head"].T, d["teacher_hidden"],
                                    d["teacher_head"]), "pass its transpose"),
    (lambda d: losses.fused_kd_loss(d["student_hidden"], d["student_head"], d["teacher_hidden"][:2],
                                    d["teacher_head"]), "same tokens"),
    (lambda d: losses.fused_kd_loss(d["student_hidden"], d["student_head"], d["teacher_hidden"],
                                    d["teacher_head"], ce_weight=0.5), "needs labels"),
    (lambda d: losses.fused_cross_entropy(d["student_hidden"], d["student_head"], d["labels"], reduction="none"),
     "'mean' or 'sum'"),
    (lambda d: losses.fused_cross_entropy(d["student_hidden"], d["student_head"], d["labels"], chunk_size=0),
     "chunk_size"),
    (lambda d: jax.jit(lambda t: losses.fused_kd_loss(d["student_hidden"], d["student_head"], d["teacher_hidden"],
                                                      d["teacher_head"], temperature=t))(2.0), "Python number"),
    (lambda d: losses.topk_kd_loss(d["student_hidden"] @ d["student_head"], np.zeros(SHAPE + (3,), np.float32),
                                   np.full(SHAPE + (3,), VOCAB)), r"in \[0, 41\)"),
    (lambda d: losses.topk_kd_loss(d["student_hidden"] @ d["student_head"], np.zeros(SHAPE + (3,), np.float32),
                                   np.zeros(SHAPE + (2,), np.int32)), "same leading axes"),
    (lambda d: losses.topk_generalized_jsd_loss(d["student_hidden"] @ d["student_head"],
                                                np.zeros(SHAPE + (3,), np.float32), np.zeros(SHAPE + (3,), np.int32),
                                                beta=1.0), "infinite"),
])
def test_bad_input_gets_a_one_line_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        call(_data())
    assert "\n" not in str(error.value)
