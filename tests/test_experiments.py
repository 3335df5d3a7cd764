"""Experiments end to end on tiny data: resume after SIGKILL, the teacher cache, checkpoints, bad input."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdjax.checkpoint import Position, RunCheckpoints
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, Split
from kdjax.experiments.common import run
from kdjax.loop import TrainingDivergedError, train
from kdjax.models import DeepNN, LightNN
from kdjax.teacher_cache import compute_teacher_cache
from kdjax.train import create_train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_data(n_train: int = 192, n_test: int = 64) -> Cifar10:
    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),  # noqa: E731
                            rng.integers(0, 10, n).astype(np.int32))
    return Cifar10(split(n_train), split(n_test), "synthetic", 0.0)


def _config(tmp_path, **overrides) -> ExperimentConfig:
    base = dict(epochs=1, batch_size=64, checkpoint_dir=str(tmp_path / "ck"), output_dir=str(tmp_path / "runs"),
                save_every_steps=0)
    return ExperimentConfig(**(base | overrides))


def _final_params(checkpoint_dir: pathlib.Path):
    manager = ocp.CheckpointManager(checkpoint_dir.absolute(), item_names=("state", "meta"))
    step = manager.latest_step()
    tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return step, tree["params"]


@pytest.mark.parametrize("objective", ["kd", "cosine", "hint"])
def test_teacher_cache_gives_the_same_student(tmp_path, objective):
    data = _tiny_data()
    teacher_params = create_train_state(DeepNN(), jax.random.key(5)).params
    cache = compute_teacher_cache(teacher_params, data.train, ["logits", "hidden", "feature_map"])
    results = {}
    for cached in (True, False):
        config = _config(tmp_path / str(cached), name=objective, epochs=2)
        checkpoints = RunCheckpoints(tmp_path / str(cached) / "ck", {"run": objective})
        results[cached] = train(config, data, LightNN(hint=objective == "hint"), checkpoints,
                                teacher_params=teacher_params, teacher_cache=cache if cached else None,
                                log=lambda _: None)
    assert int(results[True].state.step) == 6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 results[True].state.params, results[False].state.params)


def test_teacher_cache_holds_the_teachers_outputs():
    data = _tiny_data(n_train=70)
    teacher_params = create_train_state(DeepNN(), jax.random.key(5)).params
    cache = compute_teacher_cache(teacher_params, data.train, ["logits"], batch_size=32)
    assert cache.hidden is None and cache.logits.shape == (70, 10)
    images = (data.train.images[:5] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    direct = DeepNN().apply({"params": teacher_params}, images.astype(np.float32)).logits
    np.testing.assert_allclose(cache.logits[:5], direct, rtol=1e-5, atol=1e-6)


def _cli(name: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", f"kdjax.experiments.{name}", *flags]


def test_sigkill_mid_epoch_then_rerun_is_bitwise_identical(tmp_path, full_size_copy):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "1536", "--test-size", "256", "--epochs", "2",
             "--batch-size", "32", "--save-every-steps", "5"]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    dirs = {run_name: ["--checkpoint-dir", str(tmp_path / run_name / "ck"), "--output-dir", str(tmp_path / run_name / "runs")]
            for run_name in ("whole", "killed")}
    subprocess.run(_cli("baseline", *flags, *dirs["whole"]), check=True, capture_output=True, env=env, cwd=tmp_path)

    killed_ck = tmp_path / "killed" / "ck" / "baseline"
    process = subprocess.Popen(_cli("baseline", *flags, *dirs["killed"]), env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    mid_epoch = {str(step) for step in range(5, 48 * 2, 5) if step % 48}  # 48 batches per epoch
    while time.monotonic() < deadline and process.poll() is None:
        if killed_ck.is_dir() and mid_epoch & set(os.listdir(killed_ck)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"

    rerun = subprocess.run(_cli("baseline", *flags, *dirs["killed"]), check=True, capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert "resuming from step" in rerun.stdout
    resumed_batch = int(rerun.stdout.split("resuming from step")[1].split("batch ")[1].split(")")[0])
    assert resumed_batch > 0, "resumed from an epoch boundary, not mid-epoch"

    step_whole, params_whole = _final_params(tmp_path / "whole" / "ck" / "baseline")
    step_killed, params_killed = _final_params(killed_ck)
    assert step_whole == step_killed == 96
    jax.tree.map(np.testing.assert_array_equal, params_whole, params_killed)
    finals = [json.loads(next((tmp_path / d / "runs").glob("baseline-*/final.json")).read_text())
              for d in ("whole", "killed")]
    finals += [json.loads(p.read_text()) for p in (tmp_path / "killed" / "runs").glob("baseline-*/final.json")]
    assert len({f["test_accuracy"] for f in finals}) == 1


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    state = create_train_state(LightNN(), jax.random.key(0))
    checkpoints = RunCheckpoints(tmp_path, {"run": 1})
    checkpoints.save(state, jax.random.key(1), Position(0, 3))
    later = state.replace(step=state.step + 5, params=jax.tree.map(lambda p: p + 1.0, state.params))
    checkpoints.save(later, jax.random.key(1), Position(0, 8))
    for path in (tmp_path / "5" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(b"\0" * 7)  # truncate the array data
    restored = RunCheckpoints(tmp_path, {"run": 1}).restore_latest(state, jax.random.key(1))
    assert restored is not None and int(restored[0].step) == 0 and restored[2] == Position(0, 3)
    jax.tree.map(np.testing.assert_array_equal, restored[0].params, state.params)
    assert "checkpoint step 5" in capsys.readouterr().err


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(tmp_path, name="baseline", learning_rate=1e12, save_every_steps=1, epochs=2)
    checkpoints = RunCheckpoints(tmp_path / "ck", {"run": "nan"})
    with pytest.raises(TrainingDivergedError, match=r"loss became NaN/Inf at step \d+; stopped. Last good checkpoint"):
        train(config, _tiny_data(), LightNN(), checkpoints, log=lambda _: None)
    template = create_train_state(LightNN(), jax.random.key(0))
    restored = RunCheckpoints(tmp_path / "ck", {"run": "nan"}).restore_latest(template, jax.random.key(0))
    if restored is not None:
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored[0].params))


def test_all_writes_every_output_and_reruns_from_checkpoints(tmp_path, full_size_copy, capsys):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "128", "--test-size", "64", "--epochs", "1",
             "--batch-size", "64", "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs")]
    assert run("all", flags) == 0
    first = capsys.readouterr().out
    assert "no trained teacher" in first and "teacher cache:" in first
    run_dir = next((tmp_path / "runs").glob("all-*"))
    table = (run_dir / "results.md").read_text()
    for title in ("Teacher (CE)", "Student (CE)", "Student (CE + KD)", "Student (CE + cosine)", "Student (CE + hint)"):
        assert f"| {title} |" in table
    assert "| 1,186,986 |" in table and "| 267,738 |" in table
    for name in ("teacher", "baseline", "kd", "cosine", "hint"):
        files = {p.name for p in (run_dir / name).iterdir()}
        assert {"config.json", "metrics.jsonl", "final.json", "loss.png", "accuracy.png"} <= files, name
        assert json.loads((run_dir / name / "config.json").read_text())["name"] == name
    # A rerun finds everything trained and reports the same accuracies without training.
    time.sleep(1.1)  # a new timestamped run folder
    assert run("all", flags) == 0
    second = capsys.readouterr().out
    assert "no trained teacher" not in second and " epoch 1/1" not in second
    tables = [(d / "results.md").read_text().split("\n\n")[0] for d in sorted((tmp_path / "runs").glob("all-*"))]
    accuracy = lambda t: [row.split("|")[4] for row in t.splitlines()[2:]]  # noqa: E731
    assert accuracy(tables[0]) == accuracy(tables[1])


def test_augmentation_turns_the_teacher_cache_off(tmp_path, full_size_copy, capsys):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "64", "--test-size", "64", "--epochs", "1",
             "--batch-size", "64", "--augment", "--checkpoint-dir", str(tmp_path / "ck"),
             "--output-dir", str(tmp_path / "runs")]
    assert run("kd", flags) == 0
    out = capsys.readouterr().out
    assert "teacher cache off (--augment" in out and "teacher cache:" not in out
    with pytest.raises(ValueError, match="needs a pipeline that feeds each example the same image"):
        config = _config(tmp_path / "x", name="kd", augment=True)
        data = _tiny_data()
        teacher_params = create_train_state(DeepNN(), jax.random.key(5)).params
        cache = compute_teacher_cache(teacher_params, data.train, ["logits"])
        train(config, data, LightNN(), RunCheckpoints(tmp_path / "x" / "ck", {}), teacher_params=teacher_params,
              teacher_cache=cache, log=lambda _: None)


def test_student_refuses_a_teacher_trained_on_other_data(tmp_path, full_size_copy, capsys):
    common = ["--data-dir", str(full_size_copy), "--test-size", "64", "--epochs", "1", "--batch-size", "64",
              "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs")]
    assert run("teacher", common + ["--train-size", "64"]) == 0
    steps_before = sorted(os.listdir(tmp_path / "ck" / "teacher"))
    capsys.readouterr()
    assert run("kd", common + ["--train-size", "128"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belongs to a different run" in err[0] and "train_size" in err[0]
    assert sorted(os.listdir(tmp_path / "ck" / "teacher")) == steps_before  # nothing lost


@pytest.mark.parametrize(
    "name,flags,message",
    [
        ("kd", ["--epochs", "-1"], "--epochs must be >= 0"),
        ("kd", ["--temperature", "0"], "--temperature must be > 0"),
        ("hint", ["--aux-weight", "-0.5"], "--aux-weight must be >= 0"),
        ("nope", [], "unknown experiment 'nope'"),
        ("kd", ["--data-dir", "/definitely/not/here"], "--data-dir /definitely/not/here does not exist"),
        ("kd", ["--checkpoint-dir", "/proc/kdjax"], "--checkpoint-dir /proc/kdjax is not writable"),
    ],
)
def test_bad_input_gets_one_line_and_a_non_zero_exit(name, flags, message, capsys, tmp_path):
    assert run(name, flags + ["--output-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
