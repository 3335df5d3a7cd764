"""The engine's fused path: networks that declare their output head train through `kdjax.losses.fused`, with the
values of the logits path and without a `[tokens, vocab]` array in the step."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from kdjax import methods, zoo
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import from_tokens
from kdjax.distill import Distiller
from kdjax.engine import Member, Settings, train_members
from kdjax.network import OutputHead, linen_network, nnx_network
from kdjax.teacher import Teacher
from kdjax.train import build_objective, eval_step, objective_loss

TIME, VOCAB = 12, 37
RTOL, ATOL = 1e-5, 1e-6


class TiedLM(nn.Module):
    """Embedding, a causal mixing layer and a LayerNorm; the head is the embedding table (`Embed.attend`)."""

    vocab: int
    width: int

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, self.width)
        x = embed(tokens)
        x = x + nn.Dense(self.width)(jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[:, None])
        return embed.attend(nn.LayerNorm()(x))


class LinearLM(nnx.Module):
    """An NNX model whose head is an `nnx.Linear` with a bias."""

    def __init__(self, vocab: int, width: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.lm_head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        return self.lm_head(self.norm(jnp.cumsum(x, axis=1)))


def _networks(kind: str, width: int, vocab: int = VOCAB) -> tuple:
    """(with its head declared, the same model without)."""
    if kind == "linen-dense":
        name = "causal_conv_32x2" if width == 32 else "causal_conv_128x5"
        fused = zoo.network(name, num_classes=vocab, input_shape=(TIME,))
    elif kind == "linen-tied":
        fused = linen_network(TiedLM(vocab, width), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                              head=OutputHead("LayerNorm_0", "Embed_0"))
    else:
        fused = nnx_network(lambda rngs: LinearLM(vocab, width, rngs), input_shape=(TIME,), input_dtype=jnp.int32,
                            head=OutputHead("norm", "lm_head"))
    return fused, dataclasses.replace(fused, head=None)


def _batch(seed: int = 0, batch: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (batch, TIME + 1)).astype(np.int32)
    mask = rng.random((batch, TIME)) < 0.8
    mask[0, 0] = True
    return {"inputs": jnp.asarray(tokens[:, :-1]), "label": jnp.asarray(tokens[:, 1:]), "mask": jnp.asarray(mask)}


def _train(student, teacher, method: str, steps: int = 4):
    distiller = Distiller(student, teacher, method, optax.adam(1e-2))
    state = distiller.init(jax.random.key(0), teacher.init(jax.random.key(1)) if teacher is not None else None)
    step = jax.jit(distiller.step)
    history = []
    for i in range(steps):
        state, metrics = step(state, _batch(i))
        history.append(jax.device_get(metrics))
    return distiller.variables(state)[0], history


@pytest.mark.parametrize("kind, method", [("linen-dense", "ce"), ("linen-dense", "kd"), ("linen-dense", "gkd"),
                                          ("linen-tied", "kd"), ("linen-tied", "gkd"), ("nnx-linear", "gkd")])
def test_fused_training_equals_the_logits_path(kind, method):
    """Four Adam steps with masks: every metric and parameter of the fused path equals the logits path (float32;
    the two differ only in summation order)."""
    (student, plain_student), (teacher, plain_teacher) = _networks(kind, 32), _networks(kind, 48)
    teacher = teacher if kind != "linen-dense" else zoo.network("causal_conv_32x2", num_classes=VOCAB,
                                                                input_shape=(TIME,))
    plain_teacher = dataclasses.replace(teacher, head=None)
    assert build_objective(methods.get(method), student, teacher).fused
    fused_params, fused_history = _train(student, teacher, method)
    plain_params, plain_history = _train(plain_student, plain_teacher, method)
    for fused, plain in zip(fused_history, plain_history):
        for name in ("loss", "ce_loss", "aux_loss"):
            np.testing.assert_allclose(fused[name], plain[name], rtol=RTOL, atol=ATOL, err_msg=name)
        assert fused["correct"] == plain["correct"] and fused["finite"]
    for got, want in zip(jax.tree.leaves(fused_params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=2e-6)


@pytest.mark.parametrize("method", ["kd", "gkd"])
def test_a_fused_student_distils_from_a_teacher_without_a_head(method):
    """Only the student declares its head: the teacher's logits are read chunk by chunk, with the same values."""
    student, plain_student = _networks("nnx-linear", 16)
    _, plain_teacher = _networks("linen-tied", 24)
    objective = build_objective(methods.get(method), student, plain_teacher)
    assert objective.fused and objective.teacher_reads == ("logits",)
    assert "the teacher's full logits (it declares no output head)" in objective.describe_path()
    fused_params, fused_history = _train(student, plain_teacher, method, steps=2)
    plain_params, plain_history = _train(plain_student, plain_teacher, method, steps=2)
    np.testing.assert_allclose([h["loss"] for h in fused_history], [h["loss"] for h in plain_history], rtol=RTOL)
    for got, want in zip(jax.tree.leaves(fused_params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=2e-6)


def test_labelled_rows_mask_the_ce_term_alone_on_the_fused_path():
    """Settings.labelled: CE averages over the labelled rows, the divergence over all of them, as on the logits
    path."""
    (student, plain), (teacher, _) = _networks("linen-tied", 16), _networks("linen-tied", 24)
    batch = _batch(3) | {"labelled": jnp.array([True, False, True, False])}
    method = methods.get("kd")
    hp = {name: jnp.float32(value) for name, value in method.hyperparameters.items()}
    outputs = {}
    for net, teacher_net in ((student, teacher), (plain, dataclasses.replace(teacher, head=None))):
        objective = build_objective(method, net, teacher_net)
        teacher_outputs = Teacher(teacher_net, *teacher_net.init(jax.random.key(1))).outputs(
            batch, objective.teacher_reads)
        params = {"model": net.init(jax.random.key(0))[0]}
        loss_and_grads = jax.jit(jax.value_and_grad(functools.partial(objective_loss, objective=objective),
                                                    has_aux=True))
        outputs[net.head is not None] = loss_and_grads(params, {"model": {}}, batch, jax.random.key(0),
                                                       teacher_outputs, hp)
    (fused_loss, (fused_metrics, _)), fused_grads = outputs[True]
    (plain_loss, (plain_metrics, _)), plain_grads = outputs[False]
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=RTOL)
    np.testing.assert_allclose(fused_metrics["ce_loss"], plain_metrics["ce_loss"], rtol=RTOL)
    for got, want in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


def test_a_padded_head_never_predicts_its_padding():
    """A head 5 columns wider than the vocabulary (`OutputHead(vocab_size=...)`): the same loss and gradients as a
    model whose logits are cut to the vocabulary, and zero gradient into the padding columns."""
    module = TiedLM(VOCAB + 5, 16)
    fused = linen_network(module, input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                          head=OutputHead("LayerNorm_0", "Embed_0", vocab_size=VOCAB))
    cut = linen_network(module, input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                        logits=lambda out: out[..., :VOCAB])
    params = fused.init(jax.random.key(0))[0]
    batch = _batch(1)
    grads = {}
    for net in (fused, cut):
        objective = build_objective(methods.get("ce"), net)
        loss_and_grads = jax.jit(jax.value_and_grad(functools.partial(objective_loss, objective=objective),
                                                    has_aux=True))
        (loss, _), grads[net.head is not None] = loss_and_grads({"model": params}, {"model": {}}, batch,
                                                                jax.random.key(0), None, {})
        grads[(net.head is not None, "loss")] = loss
    np.testing.assert_allclose(grads[(True, "loss")], grads[(False, "loss")], rtol=RTOL)
    table = grads[True]["model"]["Embed_0"]["embedding"]
    assert np.all(np.asarray(table[VOCAB:]) == 0.0)
    np.testing.assert_allclose(table, grads[False]["model"]["Embed_0"]["embedding"], rtol=RTOL, atol=1e-7)
    sums = [jax.jit(functools.partial(eval_step, network=net))(params, {}, batch) for net in (fused, cut)]
    assert int(sums[0]["correct"]) == int(sums[1]["correct"])
    np.testing.assert_allclose(sums[0]["loss_sum"], sums[1]["loss_sum"], rtol=RTOL)


def test_evaluation_through_the_head_equals_the_logits():
    fused, plain = _networks("nnx-linear", 16)
    params, state = fused.init(jax.random.key(2))
    batch = _batch(5, batch=6)
    got, want = (jax.jit(lambda p, s, b, net=net: eval_step(p, s, b, network=net))(params, state, batch)
                 for net in (fused, plain))
    assert int(got["correct"]) == int(want["correct"]) and int(got["count"]) == int(want["count"])
    np.testing.assert_allclose(got["loss_sum"], want["loss_sum"], rtol=RTOL)


@pytest.mark.parametrize("method", ["ce", "kd", "gkd"])
def test_the_fused_program_step_needs_a_tenth_of_the_logits_paths_memory(method):
    """XLA's memory analysis of the engine's program step (what the memory planner reads; compiled, never run), at
    8 x 512 tokens and a 128,256 vocabulary: the fused step's temporaries are under 1/10 of the logits path's and
    do not grow with the tokens (one chunk's working set)."""
    from bench.lm import engine_memory  # the benchmark's engine rows: Embed+Dense, student d 64, teacher d 128

    vocab = 128_256
    fused, logits = (engine_memory(8, 512, vocab, method, head, "1 device")[0] for head in (True, False))
    assert fused < logits / 10, (fused, logits)
    assert engine_memory(4, 512, vocab, method, True, "1 device")[0] > 0.9 * fused


def test_the_engine_logs_its_path_and_trains_the_same_members(tmp_path):
    """train_members on token data with a teacher: the fused members end where the logits path's do, and the
    log names each program's path."""
    data = from_tokens(np.random.default_rng(0).integers(0, VOCAB, 800).astype(np.int32), time=TIME,
                       vocab_size=VOCAB, test_fraction=0.2)
    teacher_network = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))
    teacher = Teacher(teacher_network, *teacher_network.init(jax.random.key(7)))
    settings = Settings(epochs=1, batch_size=16, log_every_steps=0, save_every_steps=0)
    members = [Member.of("ce", 0), Member.of("kd", 0)]
    results = {}
    for head in (True, False):
        student = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))
        student = student if head else dataclasses.replace(student, head=None)
        plain_teacher = teacher if head else Teacher(dataclasses.replace(teacher_network, head=None), teacher.params,
                                                    teacher.state)
        lines = []
        programs = train_members(members, student, data.train, data.test, settings,
                                 lambda chunk: RunCheckpoints(tmp_path / str(head) / chunk[0].name, {"test": "fused"}),
                                 teacher=plain_teacher, log=lines.append)
        results[head] = programs
        if head:
            assert any("kd: fused head (the student's and the teacher's logits" in line for line in lines), lines
            assert any("ce: fused head" in line for line in lines), lines
        else:
            assert any("kd: full logits (causal_conv_32x2 declares no output head)" in line for line in lines), lines
    for fused, plain in zip(results[True], results[False]):
        for got, want in zip(jax.tree.leaves(fused.states.params), jax.tree.leaves(plain.states.params)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_wrong_head_declaration_gets_a_one_line_error():
    with pytest.raises(ValueError, match=r"no submodule output at 'Dense_9'"):
        linen_network(TiedLM(VOCAB, 8), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                      head=OutputHead("Dense_9", "Embed_0"))
    with pytest.raises(ValueError, match=r"no head parameters at 'head'"):
        linen_network(TiedLM(VOCAB, 8), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                      head=OutputHead("LayerNorm_0", "head"))
    with pytest.raises(ValueError, match=r"do not make its logits"):
        linen_network(TiedLM(VOCAB, 8), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                      head=OutputHead("LayerNorm_0", "Dense_0"))
    with pytest.raises(ValueError, match=r"vocab_size must be in \[1, 37\]"):
        linen_network(TiedLM(VOCAB, 8), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                      head=OutputHead("LayerNorm_0", "Embed_0", vocab_size=40))
