"""On-policy GKD: the samplers, λ = 0 as off-policy GKD, and one step against a float64 restatement of TRL's loss
(`trl.GKDTrainer.generalized_jsd_loss`, batchmean over the completion's tokens) on the same sampled tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kdjax import methods, zoo
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import from_tokens
from kdjax.engine import Member, Settings, train_members
from kdjax.network import OutputHead, linen_network
from kdjax.on_policy import on_policy_batch
from kdjax.sampling import sample_by_recompute
from kdjax.teacher import Teacher
from kdjax.train import build_objective, objective_loss

TIME, VOCAB = 12, 29


def _network(name: str):
    return zoo.network(name, num_classes=VOCAB, input_shape=(TIME,))


@pytest.mark.parametrize("name", ["gpt2_64x2", "llama_64x2"])
def test_the_cached_sampler_draws_what_recomputing_the_window_draws(name):
    network = _network(name)
    params, state = network.init(jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (3, TIME + 1)), jnp.int32)

    def recompute(key):
        return sample_by_recompute(lambda x: network.forward(params, state, x, train=False)[0], tokens, 5, key, 0.9)

    cached = jax.jit(lambda key: network.sample(params, tokens, 5, key, 0.9))
    first = cached(jax.random.key(1))
    np.testing.assert_array_equal(first, jax.jit(recompute)(jax.random.key(1)))
    np.testing.assert_array_equal(first, cached(jax.random.key(1)))  # deterministic per key
    np.testing.assert_array_equal(first[:, :5], tokens[:, :5])  # the prompt is kept
    assert (first[:, 5:] != cached(jax.random.key(2))[:, 5:]).mean() > 0.5


def _data():
    return from_tokens(np.random.default_rng(0).integers(0, VOCAB, 20 * TIME), time=TIME, vocab_size=VOCAB)


class MeanLM(nn.Module):
    """The smallest causal language model: each position's logits from the mean of the embeddings up to it."""

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, 8)(tokens)
        return nn.Dense(VOCAB)(nn.LayerNorm()(jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[:, None]))


def test_lmbda_zero_is_off_policy_gkd_exactly(tmp_path):
    """Through the engine, with a network without a cache (its sampler recomputes the window)."""
    data = _data()
    student = linen_network(MeanLM(), input_shape=(TIME,), train_argument=None, input_dtype=jnp.int32,
                            head=OutputHead("LayerNorm_0", "Dense_0"))
    teacher_network = student
    teacher = Teacher(teacher_network, *teacher_network.init(jax.random.key(7)))
    members = [Member.of(methods.GKD, 0), Member.of(methods.GKD_ON_POLICY, 0, lmbda=0.0)]
    settings = Settings(epochs=1, batch_size=8, learning_rate=3e-3)
    (program,) = train_members(members, student, data.train, data.test, settings,
                               lambda chunk: RunCheckpoints(tmp_path / "ck", {"test": "on-policy"}), teacher=teacher,
                               log=lambda _: None)
    params = program.states.params["model"]
    jax.tree.map(lambda leaf: np.testing.assert_array_equal(leaf[0], leaf[1]), params)


def _trl_generalized_jsd(student_logits, teacher_logits, labels, beta):
    """TRL's `GKDTrainer.generalized_jsd_loss` (temperature 1, reduction "batchmean") restated in float64 NumPy."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    student_log_probs, teacher_log_probs = log_softmax(student_logits), log_softmax(teacher_logits)
    mixture = np.logaddexp(student_log_probs + np.log(1 - beta), teacher_log_probs + np.log(beta))
    kl_teacher = np.exp(teacher_log_probs) * (teacher_log_probs - mixture)  # F.kl_div(mixture, teacher, log_target)
    kl_student = np.exp(student_log_probs) * (student_log_probs - mixture)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_an_on_policy_step_is_trls_loss_on_the_sampled_tokens(beta):
    data, student = _data(), _network("llama_64x2")
    teacher_network = _network("gpt2_64x2")
    teacher = Teacher(teacher_network, *teacher_network.init(jax.random.key(7)))
    objective = build_objective(methods.GKD_ON_POLICY, student, teacher_network)
    params, state = student.init(jax.random.key(0))
    hp = {**methods.GKD_ON_POLICY.hyperparameters, "lmbda": 1.0, "beta": beta, "ce_weight": 0.0, "aux_weight": 1.0}
    hp = {name: jnp.float32(value) for name, value in hp.items()}
    batch = {"inputs": jnp.asarray(data.train.inputs[:4]), "label": jnp.asarray(data.train.labels[:4]),
             "mask": jnp.ones((4, TIME), bool)}
    sampled = on_policy_batch(student, methods.GKD_ON_POLICY.sampling, params, state, batch, jax.random.key(3), hp)
    prompt = methods.GKD_ON_POLICY.sampling.prompt_length(TIME)
    np.testing.assert_array_equal(sampled["inputs"][:, :prompt], batch["inputs"][:, :prompt])
    assert not np.asarray(sampled["labelled"]).any() and (sampled["inputs"][:, prompt:] != batch["inputs"][:, prompt:]).any()
    outputs = teacher.outputs(sampled, objective.teacher_reads)
    loss = objective_loss({"model": params}, {"model": state}, sampled, None, outputs, hp, objective=objective)[0]
    with jax.enable_x64(True):
        student_logits = np.asarray(student.forward(params, state, sampled["inputs"], train=True)[0], np.float64)
        teacher_logits = np.asarray(teacher_network.forward(*teacher.variables, sampled["inputs"], train=False)[0],
                                    np.float64)
    labels = np.where(np.arange(TIME) >= prompt - 1, np.asarray(sampled["label"]), -100)  # prompt tokens: -100
    np.testing.assert_allclose(loss, _trl_generalized_jsd(student_logits, teacher_logits, labels, beta), rtol=2e-5)


def test_on_policy_methods_refuse_image_networks():
    with pytest.raises(ValueError, match="samples continuations of token windows"):
        build_objective(methods.GKD_ON_POLICY, zoo.network("resnet8"), zoo.network("resnet8"))
