"""Next-token language modelling through the unchanged engine: token data, masks, scores, methods and the command."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import zoo
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import Split, from_tokens, gather_batch, load_dataset, load_text, windows
from kdjax.data.text import load_tokens
from kdjax.experiments.common import run
from kdjax.teacher import Teacher
from kdjax.engine import Member, Settings, evaluate_members, init_states, train_members
from kdjax.tasks import CLASSIFICATION, NEXT_TOKEN
from kdjax.train import build_objective
from kdjax import methods

TIME, VOCAB = 16, 11


def _tokens(n: int = 2400, seed: int = 0) -> np.ndarray:
    """A learnable sequence: mostly `t + 1 mod VOCAB`, sometimes a random token."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < 0.8, 1, rng.integers(0, VOCAB, n))
    return (np.cumsum(steps) % VOCAB).astype(np.int32)


def _data():
    return from_tokens(_tokens(), time=TIME, vocab_size=VOCAB, test_fraction=0.2)


def test_windows_are_next_token_pairs_and_the_test_tokens_are_held_out():
    tokens = np.arange(50) % 7
    split = windows(tokens, 8, stride=5)
    np.testing.assert_array_equal(split.labels[:, :-1], split.inputs[:, 1:])
    np.testing.assert_array_equal(split.inputs[1], tokens[5:13])
    assert split.task is NEXT_TOKEN and split.labels[-1, -1] == tokens[split.inputs.shape[0] * 5 - 5 + 8]
    data = from_tokens(np.arange(1000), time=10, test_fraction=0.1)  # token i at position i
    assert data.num_classes == 1000 and data.input_shape == (10,)
    assert data.train.inputs.max() < 900 and data.test.inputs.min() >= 900  # no token shared


def test_python_text_is_character_level_with_its_alphabet():
    data = load_text(time=32)
    assert data.task is NEXT_TOKEN and data.name == "python-docs"
    assert 90 <= data.num_classes <= 200 and data.train.labels.max() < data.num_classes
    assert len(data.train) * 33 > 300_000  # ~465k characters, 90 % of them for training


def test_byte_level_text_is_its_utf8_bytes_with_a_vocabulary_of_256(tmp_path):
    text = "naïve café, ½ → ∞ " * 40  # one to three bytes per character
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = load_dataset(f"bytes:{tmp_path / 't.txt'}", window=8)
    raw = np.frombuffer(text.encode("utf-8"), np.uint8)
    assert data.num_classes == 256 and data.name.endswith("(UTF-8 bytes)") and len(raw) > len(text)
    np.testing.assert_array_equal(data.train.inputs[:2].ravel(), raw[:16])
    np.testing.assert_array_equal(data.train.labels[0], raw[1:9])
    assert load_dataset(f"text:{tmp_path / 't.txt'}", window=8).num_classes == len(set(text))


@pytest.mark.parametrize("make, message", [
    (lambda tmp: from_tokens(np.arange(5), time=8), "cannot fill one window"),
    (lambda tmp: from_tokens(np.linspace(0, 1, 50), time=8), "tokens must be integers"),
    (lambda tmp: Split(np.zeros((4, 8), np.int32), np.zeros((4,), np.int32)), "same shape"),
    (lambda tmp: Split(np.zeros((4, 8), np.int32), np.zeros((4, 8), np.int32), np.ones((4, 7), bool)), "mask"),
    (lambda tmp: (tmp / "bad.txt").write_bytes(b"\xff\xfe\x00") and load_text(tmp / "bad.txt"), "not UTF-8"),
    (lambda tmp: np.save(tmp / "t.npy", np.ones((3, 3))) or load_tokens(tmp / "t.npy", time=2), "integers"),
])
def test_bad_sequence_data_gets_a_one_line_error(tmp_path, make, message):
    with pytest.raises(ValueError, match=message) as error:
        make(tmp_path)
    assert "\n" not in str(error.value)


def test_a_token_batch_masks_padding_rows_and_the_splits_own_positions():
    split = Split(np.arange(30, dtype=np.int32).reshape(5, 6), np.ones((5, 6), np.int32),
                  np.arange(30).reshape(5, 6) % 4 != 0)
    batch = gather_batch(jax.device_put(split.arrays()), jnp.arange(8), 1, batch_size=4, num_examples=5)
    assert batch["mask"].shape == (4, 6) and batch["inputs"].dtype == jnp.int32
    np.testing.assert_array_equal(batch["mask"][0], split.mask[4])
    assert not batch["mask"][1:].any()  # padding rows of the last batch


def test_language_models_refuse_images_and_image_networks_refuse_tokens():
    assert zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,)).input_dtype == jnp.int32
    with pytest.raises(ValueError, match="takes token windows"):
        zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="takes images"):
        zoo.network("resnet20", num_classes=VOCAB, input_shape=(TIME,))


def _train(tmp, members, data, name):
    student = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))
    teacher = zoo.network("causal_conv_32x2", num_classes=VOCAB, input_shape=(TIME,))  # any network can teach
    teacher_variables = teacher.init(jax.random.key(7))
    settings = Settings(epochs=1, batch_size=16, learning_rate=3e-3, save_every_steps=0)
    return train_members(members, student, data.train, data.test, settings,
                         lambda chunk: RunCheckpoints(tmp / name / chunk[0].name, {"test": name}),
                         teacher=Teacher(teacher, *teacher_variables), log=lambda _: None)


@pytest.mark.slow
def test_language_model_members_train_as_they_would_alone_and_score_per_token(tmp_path):
    """CE and GKD members of two seeds in one program; each equals the same member trained alone, and the
    evaluation's loss is the mean next-token cross-entropy computed directly from the logits."""
    data = _data()
    members = [Member.of(name, seed) for seed in (0, 1) for name in ("ce", "gkd")]
    programs = _train(tmp_path, members, data, "together")
    results = [r for program in programs for r in program.results]
    assert all(np.isfinite(r.test_loss) and 0 < r.test_accuracy <= 100 for r in results)
    alone = [r for program in _train(tmp_path, [Member.of("gkd", 1)], data, "alone") for r in program.results]
    together = next(r for r in results if r.member == Member.of("gkd", 1))
    np.testing.assert_allclose(alone[0].test_loss, together.test_loss, rtol=1e-5)

    program = next(p for p in programs if p.results[0].member.name == "ce")
    objective = build_objective(methods.get("ce"), zoo.network("causal_conv_32x2", num_classes=VOCAB,
                                                               input_shape=(TIME,)))
    states = jax.tree.map(lambda leaf: leaf[:1], program.states)
    accuracy, loss = evaluate_members(objective, states, data.test, 16, True)
    params = jax.tree.map(lambda leaf: leaf[0], states.params["model"])
    logits, _, _ = objective.student.forward(params, {}, jnp.asarray(data.test.inputs), train=False)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(logits, data.test.labels).mean()
    np.testing.assert_allclose(loss[0], expected, rtol=1e-5)
    np.testing.assert_allclose(accuracy[0], 100 * np.mean(np.argmax(logits, -1) == data.test.labels), rtol=1e-5)


def test_the_tasks_are_read_off_the_data():
    assert _data().task is NEXT_TOKEN
    assert Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32)).task is CLASSIFICATION


def test_init_states_feed_token_ids():
    objective = build_objective(methods.get("ce"), zoo.network("causal_conv_32x2", num_classes=VOCAB,
                                                               input_shape=(TIME,)))
    states = init_states(objective, [0, 1], 1e-3)
    assert states.params["model"]["Embed_0"]["embedding"].shape == (2, VOCAB, 32)


@pytest.mark.slow
def test_the_lm_command_reports_bits_per_token_with_intervals_over_paired_seeds(tmp_path, capsys):
    np.save(tmp_path / "tokens.npy", _tokens(3000))
    flags = ["--dataset", f"tokens:{tmp_path / 'tokens.npy'}", "--window", str(TIME), "--seeds", "0,1",
             "--teacher", "causal_conv_32x2",
             "--epochs", "1", "--batch-size", "16", "--checkpoint-dir", str(tmp_path / "ck"),
             "--output-dir", str(tmp_path / "runs")]
    assert run("lm", flags) == 0
    out = capsys.readouterr().out
    assert "bits/token" in out and "teacher cache off (next-token data" in out
    (run_dir,) = (tmp_path / "runs").glob("lm-*")
    summary = (run_dir / "summary.md").read_text()
    assert "## Test bits per token per configuration" in summary and "bits per token − CE (bits)" in summary
    rows = [json.loads(line) for line in (run_dir / "members.jsonl").read_text().splitlines()]
    assert sorted({(r["method"], r["seed"]) for r in rows if r["role"] == "student"}) == [
        (m, s) for m in ("ce", "gkd", "kd") for s in (0, 1)]
    assert json.loads((run_dir / "config.json").read_text())["task"] == "next-token"


@pytest.mark.parametrize("flags, message", [
    (["--methods", "ce,hint"], "feature_map"),
    (["--augment", "flip"], "next-token data takes --augment none"),
    (["--window", "0"], "--window must be >= 1"),
])
def test_the_lm_command_refuses_what_cannot_work_in_one_line(tmp_path, capsys, flags, message):
    assert run("lm", ["--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs"),
                      "--train-size", "64", *flags]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
