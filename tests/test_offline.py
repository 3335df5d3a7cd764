"""The offline top-k teacher: what it stores is the teacher's top k, and `topk-kd` on it is KD against the teacher
cut to its first k logits (the dense `kd_loss` with `-inf` elsewhere: the definition), fused or not."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from kdjax import losses, methods, offline, zoo
from kdjax.config import ConfigError, ExperimentConfig
from kdjax.data import from_tokens
from kdjax.distill import Distiller
from kdjax.losses.topk import TopKLogits
from kdjax.teacher import Teacher
from kdjax.train import build_objective, objective_loss

TIME, VOCAB, K = 12, 37, 6


def _data(seed: int = 0):
    return from_tokens(np.random.default_rng(seed).integers(0, VOCAB, 40 * TIME), time=TIME, vocab_size=VOCAB)


def _teacher(head: bool) -> Teacher:
    network = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))
    network = network if head else dataclasses.replace(network, head=None)
    return Teacher(network, *network.init(jax.random.key(1)))


@pytest.mark.parametrize("head", [True, False])
def test_the_stored_top_k_is_the_teachers_own(tmp_path, head):
    teacher, split = _teacher(head), _data().train
    manifest = offline.write(tmp_path / "top", teacher, split, k=K, batch_size=8, windows_per_file=16,
                             log=lambda _: None)
    logits = teacher.network.forward(teacher.params, teacher.state, jnp.asarray(split.inputs), train=False)[0]
    values, indices = jax.lax.top_k(logits, K)
    cached, read_manifest = offline.read(tmp_path / "top", split)
    table = cached.table[methods.TOPK_READ]
    assert read_manifest == manifest and [f["windows"] for f in manifest["files"]] == [16, 16, 3]  # 35 windows
    np.testing.assert_array_equal(table.indices, indices)
    np.testing.assert_array_equal(table.values, np.asarray(values).astype(ml_dtypes.bfloat16))
    assert manifest["bytes"] == split.labels.size * K * (2 + 4) + 2 * 128 * 3  # + a 128-byte .npy header a file
    chunked = offline.topk_outputs(teacher, {"inputs": jnp.asarray(split.inputs[:5])}, K, chunk=7)  # padded chunks
    np.testing.assert_array_equal(chunked.indices, indices[:5])


@pytest.mark.parametrize("top_k", [0, 2])
def test_topk_kd_is_kd_against_the_teacher_cut_to_k_fused_or_not(top_k):
    fused = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))
    split = _data().train
    teacher_logits = _teacher(True).network.forward(*_teacher(True).variables, jnp.asarray(split.inputs[:4]),
                                                    train=False)[0]
    values, indices = jax.lax.top_k(teacher_logits, K)
    rng = np.random.default_rng(1)
    batch = {"inputs": jnp.asarray(split.inputs[:4]), "label": jnp.asarray(split.labels[:4]),
             "mask": jnp.asarray(rng.random((4, TIME)) < 0.8)}
    hp = {**methods.TOPK_KD.hyperparameters, "temperature": 1.5, "top_k": float(top_k)}
    hp = {name: jnp.float32(value) for name, value in hp.items()}
    params, state = fused.init(jax.random.key(0))
    kept = K if top_k == 0 else top_k
    dense = jnp.full_like(teacher_logits, -jnp.inf)
    dense = jnp.put_along_axis(dense, indices[..., :kept], values[..., :kept], axis=-1, inplace=False)

    def expected(p):
        logits = fused.forward(p, state, batch["inputs"], train=True)[0]
        return (0.75 * losses.cross_entropy(logits, batch["label"], where=batch["mask"])
                + 0.25 * losses.kd_loss(logits, dense, temperature=1.5, where=batch["mask"]))

    want, want_grad = jax.value_and_grad(expected)(params)
    teacher = {methods.TOPK_READ: TopKLogits(values, indices)}
    for network in (fused, dataclasses.replace(fused, head=None)):
        objective = build_objective(methods.TOPK_KD, network)
        assert objective.fused == (network.head is not None) and objective.teacher_reads == (methods.TOPK_READ,)

        def loss(p):
            return objective_loss({"model": p}, {"model": state}, batch, None, teacher, hp, objective=objective)[0]

        got, grad = jax.value_and_grad(loss)(params)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, want_grad)


def test_what_cannot_serve_is_refused_in_one_line(tmp_path):
    split = _data().train
    offline.write(tmp_path / "top", _teacher(True), split, k=K, log=lambda _: None)
    with pytest.raises(offline.OfflineTeacherError, match="written for another training split") as error:
        offline.read(tmp_path / "top", _data(seed=1).train)
    assert "\n" not in str(error.value)
    with pytest.raises(offline.OfflineTeacherError, match="holds no manifest.json"):
        offline.read(tmp_path, split)
    with pytest.raises(offline.OfflineTeacherError, match=r"--k must be in \[1, 37\]"):
        offline.write(tmp_path / "x", _teacher(True), split, k=38)
    distiller = Distiller(zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,)), None, "topk-kd",
                          optax.adam(1e-3))  # your own loop: the top-k rides in the batch
    with pytest.raises(ValueError, match=r"give batch\['topk'\] = kdjax.losses.topk.TopKLogits"):
        distiller.step(distiller.init(jax.random.key(0)), {"inputs": jnp.asarray(split.inputs[:2]),
                                                           "label": jnp.asarray(split.labels[:2])})
    common = {"name": "lm", "dataset": "text", "checkpoint_dir": str(tmp_path / "ck"),
              "output_dir": str(tmp_path / "runs")}
    for values, message in (
            ({"methods": ("ce", "topk-kd")}, "topk-kd read(s) an offline teacher's stored top-k; give --teacher-topk"),
            ({"methods": ("kd", "topk-kd"), "teacher_topk": str(tmp_path / "top")}, "kd run(s) the teacher network"),
            ({"methods": ("topk-kd",), "teacher_topk": str(tmp_path)}, "holds no manifest.json")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            ExperimentConfig.from_flat(**common, **values).validate()
