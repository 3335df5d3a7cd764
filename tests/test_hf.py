"""The transformer zoo and Hugging Face checkpoints against `transformers` itself.

References: `tests/reference/make_hf_reference.py` ran `transformers`' GPT2LMHeadModel and LlamaForCausalLM
(tiny random configurations built locally) and stored their weights, logits (float32, float64), every block's
output, attention probabilities, final norm and the cross-entropy gradient. The tests marked `live` build the
models with `transformers` again and load kdjax's exported folders back into it; they skip where it is absent.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import hf, zoo
from kdjax.network import HIDDEN_ROLE
from kdjax.zoo.transformer import Transformer, TransformerConfig

REFERENCE = np.load(pathlib.Path(__file__).parent / "reference" / "hf_reference.npz")
MODELS = ("gpt2", "llama", "llama3_tied")
# transformers computes RoPE's cos/sin in float32 (torch's own cos, within an ulp of NumPy's) also for a float64
# model: that rounding, 6e-8, bounds the Llama layouts' float64 agreement.
FLOAT64_ATOL = {"gpt2": 1e-12, "llama": 2e-7, "llama3_tied": 2e-7}


def reference(name: str) -> tuple[TransformerConfig, dict[str, np.ndarray]]:
    config = hf.config_from_hf(json.loads(str(REFERENCE[f"{name}/config"])))
    prefix = f"{name}/weights/"
    return config, {key[len(prefix):]: REFERENCE[key] for key in REFERENCE.files if key.startswith(prefix)}


def inputs_and_labels() -> tuple[jax.Array, jax.Array]:
    tokens = jnp.asarray(REFERENCE["tokens"], jnp.int32)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("name", MODELS)
def test_logits_roles_and_gradient_match_transformers(name):
    config, state_dict = reference(name)
    inputs, labels = inputs_and_labels()
    params32 = hf.params_from_state_dict(config, state_dict)
    logits32 = Transformer(config).apply({"params": params32}, inputs)
    np.testing.assert_allclose(logits32, REFERENCE[f"{name}/logits32"], rtol=1e-5, atol=2e-6)
    network = zoo.transformer_network(config, time=inputs.shape[1])
    roles = [f"block{i}" for i in range(config.layers)] + [f"attention{i}" for i in range(config.layers)]
    with jax.enable_x64(True):
        params = hf.params_from_state_dict(config, state_dict, dtype=jnp.float64)
        logits, outs, _ = network.forward(params, {}, inputs, train=False, roles=[*roles, HIDDEN_ROLE])
        atol = FLOAT64_ATOL[name]
        np.testing.assert_allclose(logits, REFERENCE[f"{name}/logits64"], rtol=0, atol=atol)
        for role in [*roles, HIDDEN_ROLE]:
            np.testing.assert_allclose(outs[role], REFERENCE[f"{name}/role/{role}"], rtol=0, atol=atol * 10,
                                       err_msg=role)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(Transformer(config).apply({"params": p}, inputs),
                                                                   labels).mean()
        value, grads = jax.value_and_grad(loss)(params)
        np.testing.assert_allclose(value, REFERENCE[f"{name}/loss64"], rtol=1e-7)
        got = hf.state_dict_from_params(config, grads, dtype=np.float64)
        prefix = f"{name}/grad/"
        expected = {key[len(prefix):]: REFERENCE[key] for key in REFERENCE.files if key.startswith(prefix)}
        assert set(got) == set(expected)
        scale = max(np.abs(g).max() for g in expected.values())
        for key, grad in expected.items():
            np.testing.assert_allclose(got[key], grad, rtol=0, atol=scale * atol * 100, err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_round_trip_with_transformers_names(tmp_path, name):
    config, state_dict = reference(name)
    params = hf.params_from_state_dict(config, state_dict)
    hf.save_pretrained(tmp_path / "out", config, params)
    from safetensors.numpy import load_file

    saved = load_file(tmp_path / "out" / hf.WEIGHTS_FILE)
    assert sorted(saved) == list(REFERENCE[f"{name}/saved_names"])  # what transformers' save_pretrained writes
    assert hf.read_config(tmp_path / "out") == config
    loaded_config, loaded = hf.load_pretrained(tmp_path / "out")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_mismatched_checkpoints_are_refused_in_one_line(tmp_path):
    config, state_dict = reference("llama")
    params = hf.params_from_state_dict(config, state_dict)
    hf.save_pretrained(tmp_path / "ok", config, params)
    cases = {
        "more layers": ({"num_hidden_layers": 3}, "missing ['model.layers.2"),
        "another width": ({"intermediate_size": 48}, "down_proj.weight has shape (32, 64); the config makes it (32, 48)"),
        "another architecture": ({"model_type": "mistral"}, "model_type 'mistral' is not a layout"),
        "rope kind": ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope type 'yarn'"),
    }
    hf_config = json.loads((tmp_path / "ok" / hf.CONFIG_FILE).read_text())
    for label, (change, message) in cases.items():
        folder = tmp_path / label.replace(" ", "_")
        folder.mkdir()
        (folder / hf.CONFIG_FILE).write_text(json.dumps(hf_config | change))
        (folder / hf.WEIGHTS_FILE).write_bytes((tmp_path / "ok" / hf.WEIGHTS_FILE).read_bytes())
        with pytest.raises(hf.CheckpointFormatError) as error:
            hf.load_pretrained(folder)
        assert message in str(error.value) and "\n" not in str(error.value), label
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / hf.CONFIG_FILE).write_text(json.dumps(hf_config))
    (truncated / hf.WEIGHTS_FILE).write_bytes((tmp_path / "ok" / hf.WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(hf.CheckpointFormatError, match="not a readable safetensors file"):
        hf.load_pretrained(truncated)
    with pytest.raises(hf.CheckpointFormatError, match="has no config.json"):
        hf.load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="at most 64 positions; use --window 64"):
        zoo.transformer_network(config, time=65)


def live_transformers():
    pytest.importorskip("torch", reason="torch is optional; install kdjax[reference] to run this")
    return pytest.importorskip("transformers", reason="transformers is optional; install kdjax[reference] to run this")


@pytest.mark.parametrize("name", MODELS)
def test_live_transformers_loads_the_export_and_kdjax_loads_transformers(tmp_path, name):
    transformers = live_transformers()
    import torch

    config, state_dict = reference(name)
    params = hf.params_from_state_dict(config, state_dict)
    hf.save_pretrained(tmp_path / "kdjax", config, params)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "kdjax", attn_implementation="eager")
    inputs, _ = inputs_and_labels()
    with torch.no_grad():
        theirs = model(torch.tensor(np.asarray(inputs))).logits.numpy()
    np.testing.assert_allclose(theirs, REFERENCE[f"{name}/logits32"], rtol=1e-5, atol=2e-6)
    model.save_pretrained(tmp_path / "transformers")
    assert hf.read_config(tmp_path / "transformers") == config
    _, reloaded = hf.load_pretrained(tmp_path / "transformers")
    jax.tree.map(np.testing.assert_array_equal, reloaded, hf.from_transformers(model)[1])
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)


def test_a_transformers_folder_teaches_a_student_that_goes_back_out_as_one(tmp_path, capsys):
    """The README's command: a GPT-2 folder distilled into a Llama-layout student on .npy tokens, exported as
    folders; each one holds the weights the run evaluated (its test loss, recomputed from the folder)."""
    from kdjax.experiments.common import run

    config, state_dict = reference("gpt2")
    hf.save_pretrained(tmp_path / "teacher", config, hf.params_from_state_dict(config, state_dict))
    tokens = np.random.default_rng(0).integers(0, 90, 1200)  # the teacher's vocabulary is 96
    np.save(tmp_path / "tokens.npy", tokens)
    common = ["--dataset", f"tokens:{tmp_path / 'tokens.npy'}", "--teacher-weights", str(tmp_path / "teacher"),
              "--window", "16", "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs")]
    assert run("lm", [*common, "--student", "llama_64x2", "--methods", "ce,kd", "--seeds", "0", "--epochs", "1",
                      "--batch-size", "16", "--export-weights", str(tmp_path / "students")]) == 0
    out = capsys.readouterr().out
    assert "96 tokens in the vocabulary" in out and f"teacher: gpt2_32x2 from {tmp_path / 'teacher'}" in out
    (run_dir,) = (tmp_path / "runs").glob("lm-*")
    rows = {r["method"]: r for r in map(json.loads, (run_dir / "members.jsonl").read_text().splitlines())
            if r["role"] == "student"}
    test = tokens[int(round(len(tokens) * 0.9)):]
    inputs = np.stack([test[i:i + 16] for i in range(0, len(test) - 16, 16)])
    labels = np.stack([test[i + 1:i + 17] for i in range(0, len(test) - 16, 16)])
    for method in ("ce", "kd"):
        student_config, params = hf.load_pretrained(tmp_path / "students" / f"{method}-seed0")
        assert (student_config.layout, student_config.vocab_size) == ("llama", 96)
        logits = Transformer(student_config).apply({"params": params}, jnp.asarray(inputs))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()
        np.testing.assert_allclose(loss, rows[method]["test_loss"], rtol=1e-5)

    # The same teacher offline: its top 8 stored once, a top-k student trained from the files alone.
    from kdjax import offline

    assert offline.main(["--teacher-weights", str(tmp_path / "teacher"), "--dataset", f"tokens:{tmp_path / 'tokens.npy'}",
                         "--window", "16", "--k", "8", "--out", str(tmp_path / "top8")]) == 0
    assert run("lm", [*common[:2], *common[4:], "--teacher-topk", str(tmp_path / "top8"), "--student", "llama_64x2",
                      "--methods", "topk-kd", "--seeds", "0", "--epochs", "1", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "offline teacher: top-8 of 1,072 tokens" in out
    assert "teacher: offline top-8 (bfloat16) of gpt2_32x2 from" in out
    assert "topk-kd: fused head (the student's logits one chunk at a time; the stored top-k teacher)" in out

    np.save(tmp_path / "tokens.npy", np.append(tokens, 96))
    assert run("lm", [*common, "--methods", "ce,kd", "--seeds", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "token ids must lie in [0, 96), found 96" in err and "\n" not in err
