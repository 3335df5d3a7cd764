"""Experiment commands end to end on tiny data: outputs, reuse, extension, SIGKILL resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdjax import methods
from kdjax.experiments.common import run
from kdjax.report import read_run


def _cli(name: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", f"kdjax.experiments.{name}", *flags]


def _flags(tmp_path, data_dir, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--train-size", "256", "--test-size", "64", "--batch-size", "64",
            "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs"),
            *extra]


@pytest.mark.slow
def test_all_writes_its_outputs_reuses_the_teacher_and_extends(tmp_path, full_size_copy, capsys):
    assert run("all", _flags(tmp_path, full_size_copy)) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").glob("all-*")
    assert f"all: outputs in {run_dir}" in out
    for name in ("config.json", "members.jsonl", "summary.md", "accuracy.png", "loss.png"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run_dir / "members.jsonl").read_text().splitlines()]
    assert [(r["network"], r["method"]) for r in rows] == [("DeepNN", "ce"), ("LightNN", "ce"), ("LightNN", "kd"),
                                                            ("LightNN", "cosine"), ("LightNN", "hint")]
    assert "Teacher: DeepNN" in (run_dir / "summary.md").read_text() and "view_accuracy" not in rows[0]
    # A rerun trains nothing and computes no teacher outputs.
    assert run("all", _flags(tmp_path, full_size_copy)) == 0
    out = capsys.readouterr().out
    assert out.count("already trained for 1 epochs") == 5 and "teacher cache" not in out
    # Another student setting reuses the same teacher.
    assert run("kd", _flags(tmp_path, full_size_copy, "--temperature", "4", "--seeds", "0,1")) == 0
    out = capsys.readouterr().out
    assert "teacher: already trained" in out and "student" in out
    # A finished run extends: the 1-epoch checkpoint resumes into epoch 2.
    assert run("baseline", _flags(tmp_path, full_size_copy, "--epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "resuming at epoch 2, batch 0" in out, out


@pytest.mark.slow
def test_students_take_their_teacher_from_a_program_of_several_seeds(tmp_path, full_size_copy, capsys):
    """A member trains bitwise the same alone or in a program (test_loop), so the program's seed 4 is that teacher."""
    assert run("teacher", _flags(tmp_path, full_size_copy, "--seeds", "3,4", "--train-size", "128")) == 0
    assert run("kd", _flags(tmp_path, full_size_copy, "--teacher-seed", "4", "--train-size", "128")) == 0
    assert "teacher: seed 4 from the saved program of seeds 3, 4" in capsys.readouterr().out
    assert len(list((tmp_path / "ck" / "teacher").iterdir())) == 1  # no teacher trained alone
    (teacher_run,), (kd_run,) = (tmp_path / "runs").glob("teacher-*"), (tmp_path / "runs").glob("kd-*")
    teachers = [json.loads(line) for line in (teacher_run / "members.jsonl").read_text().splitlines()]
    used = json.loads((kd_run / "members.jsonl").read_text().splitlines()[0])
    assert (used["seed"], used["test_loss"]) == (4, teachers[1]["test_loss"]) != (3, teachers[0]["test_loss"])


@pytest.mark.slow
def test_augmentation_turns_the_teacher_cache_off(tmp_path, full_size_copy, capsys):
    assert run("kd", _flags(tmp_path, full_size_copy, "--augment")) == 0
    assert "teacher cache off (augmentation (flip) shows the teacher another image" in capsys.readouterr().out


def test_checkpoints_of_an_earlier_layout_get_a_clear_message(tmp_path, full_size_copy, capsys):
    (tmp_path / "ck" / "teacher" / "3910").mkdir(parents=True)
    (tmp_path / "ck" / "teacher" / "9287152830145495").mkdir()  # a run's fingerprint that happens to be all digits
    assert run("kd", _flags(tmp_path, full_size_copy)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "earlier kdjax version (steps 3910)" in err[0] and "mv " in err[0]


def _final_params(directory):
    manager = ocp.CheckpointManager(directory.absolute(), item_names=("state", "meta"))
    step = manager.latest_step()
    tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return step, tree["params"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_is_bitwise_identical(tmp_path, full_size_copy):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "1536", "--test-size", "256", "--epochs", "2",
             "--batch-size", "32", "--save-every-steps", "5"]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    dirs = {name: ["--checkpoint-dir", str(tmp_path / name / "ck"), "--output-dir", str(tmp_path / name / "runs")]
            for name in ("whole", "killed")}
    subprocess.run(_cli("baseline", *flags, *dirs["whole"]), check=True, capture_output=True, env=env, cwd=tmp_path)
    process = subprocess.Popen(_cli("baseline", *flags, *dirs["killed"]), env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    mid_epoch = {str(step) for step in range(5, 48 * 2, 5) if step % 48}  # 48 batches per epoch
    killed_root = tmp_path / "killed" / "ck" / "ce"
    while time.monotonic() < deadline and process.poll() is None:
        folders = list(killed_root.iterdir()) if killed_root.is_dir() else []
        if folders and mid_epoch & set(os.listdir(folders[0])):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    rerun = subprocess.run(_cli("baseline", *flags, *dirs["killed"]), check=True, capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    resumed_batch = int(rerun.stdout.split("resuming at epoch")[1].split("batch ")[1].split(" ")[0])
    assert resumed_batch > 0, "resumed from an epoch boundary, not mid-epoch"
    (whole,) = (tmp_path / "whole" / "ck" / "ce").iterdir()
    (killed,) = killed_root.iterdir()
    step_whole, params_whole = _final_params(whole)
    step_killed, params_killed = _final_params(killed)
    assert step_whole == step_killed == 96
    jax.tree.map(np.testing.assert_array_equal, params_whole, params_killed)


@pytest.mark.parametrize("name,flags,message", [
    ("kd", ["--epochs", "0"], "--epochs must be >= 1"),
    ("kd", ["--learning-rate", "inf"], "--learning-rate must be a finite number > 0"),
    ("kd", ["--temperature", "0"], "--temperature must be > 0"),
    ("hint", ["--aux-weight", "-0.5"], "--aux-weight must be >= 0"),
    ("kd", ["--sweep", "temperature=1,nan"], "--temperature must be finite"),
    ("kd", ["--devices", "3"], "--devices 3: only 1 cpu device(s) here"),
    ("kd", ["--train-size", "99999999"], "--train-size 99,999,999 exceeds the 50,000 images"),
    ("kd", ["--seeds", "1,1"], "--seeds has a repeated seed"),
    ("nope", [], "unknown experiment 'nope'"),
    ("kd", ["--data-dir", "/definitely/not/here"], "--data-dir /definitely/not/here does not exist"),
    ("kd", ["--checkpoint-dir", "/proc/kdjax"], "--checkpoint-dir /proc/kdjax is not writable"),
    ("kd", ["--augment", "rotate"], "--augment must be one of none, flip, crop-flip"),
    ("methods", ["--methods", "ce,kd,nope"], "--methods: unknown method(s) nope"),
    ("dkd", ["--labelled-size", "100"], "--labelled-size: dkd reads every example's label"),
    ("kd", ["--labelled-size", "99999999"], "--labelled-size 99,999,999 exceeds the 50,000 training images"),
    ("kd", ["--validation-size", "49900"], "--validation-size 49,900 leaves fewer than --batch-size 128"),
])
def test_bad_input_gets_one_line_and_a_non_zero_exit(name, flags, message, capsys, tmp_path, full_size_copy):
    base = ["--data-dir", str(full_size_copy), "--output-dir", str(tmp_path / "runs"),
            "--checkpoint-dir", str(tmp_path / "ck")]
    assert run(name, base + flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list((tmp_path / "runs").glob("*-*"))


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "2"], "unrecognized arguments: --temperature 2 (python -m kdjax.experiments.baseline --help"),
    (["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["--seeds", "0,a"], "argument --seeds: takes comma-separated integers, got '0,a'"),
])
def test_flags_that_do_not_parse_get_one_line_and_exit_2(capsys, flags, message):
    assert run("baseline", flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("flags, message", [
    (["--sweep", "temperature=1,2", "--temperature", "3"], "--temperature and --sweep temperature both set"),
    (["--sweep", "temperature=1,2", "--sweep", "temperature=4"], "--sweep temperature is given twice"),
])
def test_conflicting_hyperparameter_flags_are_refused(capsys, flags, message):
    assert run("kd", flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.fixture(scope="module")
def shared_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("library")


def test_every_method_of_a_network_teacher_has_a_command_that_runs_it():
    """`python -m kdjax.experiments.NAME` is `run("NAME")` for each method of a network teacher but CE (the baseline
    command's): what the commands' test below runs in-process."""
    import pathlib
    folder = pathlib.Path(run.__code__.co_filename).parent
    names = [m.name for m in methods.any_data() if m.name != "ce"]
    assert len(names) == 11
    for name in names:
        source = (folder / f"{name}.py").read_text()
        assert f'sys.exit(run("{name}"))' in source and 'if __name__ == "__main__":' in source, name


@pytest.mark.slow
@pytest.mark.parametrize("command, names", [("dkd", ["dkd"]), ("methods", ["lskd", "dist", "at", "rkd", "pkt", "sp"])])
def test_each_library_method_runs_from_a_command(command, names, shared_dirs, full_size_copy, capsys):
    """A method's own command (each is `run(its name)`), and `methods` for the other six: one teacher (trained by
    the first command) serves both."""
    extra = ["--methods", ",".join(names)] if command == "methods" else []
    assert run(command, _flags(shared_dirs, full_size_copy, "--train-size", "128", "--seeds", "0,1", *extra)) == 0
    out = capsys.readouterr().out
    (run_dir,) = (shared_dirs / "runs").glob(f"{command}-*")
    rows = [json.loads(line) for line in (run_dir / "members.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"]) for r in rows[1:]] == [(name, seed) for name in names for seed in (0, 1)]
    summary = (run_dir / "summary.md").read_text()
    assert all(f"| LightNN | {methods.get(name).title} |" in summary for name in names)
    assert f"{command}: outputs in {run_dir}" in out


@pytest.mark.slow
def test_baseline_flag_compares_with_the_ce_program_a_baseline_command_saved(shared_dirs, full_size_copy, capsys):
    flags = _flags(shared_dirs, full_size_copy, "--train-size", "128", "--seeds", "0,1")
    assert run("baseline", flags) == 0
    capsys.readouterr()
    assert run("dist", [*flags, "--baseline"]) == 0
    out = capsys.readouterr().out
    assert "student ce: already trained for 1 epochs" in out  # the baseline command's CE program, reused
    (run_dir,) = [d for d in (shared_dirs / "runs").glob("dist-*") if '"baseline": true' in
                  (d / "config.json").read_text()]
    summary = (run_dir / "summary.md").read_text()
    assert "## Against CE over the same seeds" in summary and "CE + DIST" in summary


@pytest.mark.slow
def test_label_transfer_teaches_from_the_labelled_images_and_holds_out_validation(tmp_path, full_size_copy, capsys):
    flags = _flags(tmp_path, full_size_copy, "--labelled-size", "128", "--validation-size", "64", "--seeds", "0,1")
    assert run("kd", flags) == 0
    (run_dir,) = (tmp_path / "runs").glob("kd-*")
    _, *students = [json.loads(line) for line in (run_dir / "members.jsonl").read_text().splitlines()]
    (teacher_dir,), (student_dir,) = (tmp_path / "ck" / "teacher").iterdir(), (tmp_path / "ck" / "kd").iterdir()
    assert _steps(teacher_dir) == [2]  # one epoch of the 128 labelled images at batch 64
    assert _steps(student_dir) == [3]  # one epoch of the 256 images less the 64 held out
    assert all(0 <= s["validation_accuracy"] <= 100 for s in students)
    assert "mean validation accuracy" in (run_dir / "summary.md").read_text()
    # The same teacher serves the label-transfer CE run, and the students' checkpoints are their own.
    assert run("teacher", _flags(tmp_path, full_size_copy, "--labelled-size", "128")) == 0
    assert "teacher: already trained" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"teacher", "kd"}


def _steps(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_methods_runs_every_registered_method():
    from kdjax.config import ExperimentConfig

    assert ExperimentConfig(name="methods").student_methods == ("ce", *(m.name for m in methods.any_data()
                                                                        if m.name != "ce"))
    assert {"kd", "gkd", "dkd"} < set(ExperimentConfig(name="methods").student_methods)
    assert not {"topk-kd", "gkd-on-policy"} & set(ExperimentConfig(name="methods").student_methods)
    assert ExperimentConfig(name="methods", methods=("ce", "at")).student_methods == ("ce", "at")


@pytest.mark.slow
def test_with_augmentation_the_methods_that_read_the_teacher_share_a_program(tmp_path, full_size_copy, capsys):
    flags = _flags(tmp_path, full_size_copy, "--methods", "ce,kd,at", "--augment", "crop-flip",
                   "--teacher-augment", "none", "--train-size", "128")
    assert run("methods", flags) == 0
    out = capsys.readouterr().out
    assert '"augment": "crop-flip"' in out
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"teacher", "ce", "kd+at"}
    (line,) = [line for line in out.splitlines() if line.startswith("student kd+at epoch 1/1: ")]
    assert line.startswith("student kd+at epoch 1/1: loss kd ") and ", at " in line  # each method's own loss
    (run_dir,) = (tmp_path / "runs").glob("methods-*")
    rows = [json.loads(line) for line in (run_dir / "members.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"]) for r in rows[1:]] == [("ce", 42), ("kd", 42), ("at", 42)]
    # The teacher is scored on the students' views too; the students are not.
    views = rows[0]["view_accuracy"]
    assert 0 <= views <= 100 and all("view_accuracy" not in r for r in rows[1:])
    assert f"teacher: {views:.2f}% on one crop-flip view of each test image" in out
    assert f"{views:.2f}% on one crop-flip view of each test image." in (run_dir / "summary.md").read_text()
    assert read_run(run_dir)[1][0].view_accuracy == views
    assert (run_dir / "ranking.png").exists()


def test_networks_by_name_are_checked_before_any_work(tmp_path, full_size_copy, capsys):
    places = ["--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "out"), "--data-dir",
              str(full_size_copy), "--train-size", "256", "--test-size", "64"]
    assert run("kd", ["--student", "resnet99", *places]) == 1
    assert "error: --student: unknown network 'resnet99'; choose from deepnn, lightnn, resnet8," in capsys.readouterr().err
    assert run("hint", ["--teacher", "resnet56", "--student", "shufflenetv1", *places]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: hint between teacher resnet56 and student shufflenetv1: the hint regressor keeps")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ck" / "teacher").exists()


@pytest.mark.slow
def test_ctrl_c_saves_where_training_stands_then_the_rerun_resumes_there(tmp_path, full_size_copy):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "6016", "--test-size", "256", "--epochs", "2",
             "--batch-size", "32", "--save-every-steps", "0", "--checkpoint-dir", str(tmp_path / "ck"),
             "--output-dir", str(tmp_path / "runs")]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(_cli("baseline", *flags), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    root, deadline = tmp_path / "ck" / "ce", time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:  # into epoch 2: its first checkpoint is written
        if root.is_dir() and any((folder / "188").is_dir() for folder in root.iterdir()):
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted; saved epoch 2, batch " in out and err.strip().splitlines()[-1].startswith("interrupted;")
    rerun = subprocess.run(_cli("baseline", *flags), check=True, capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    saved = int(out.split("saved epoch 2, batch ")[1].split(" ")[0])
    assert 0 < saved < 188 and f"resuming at epoch 2, batch {saved} " in rerun.stdout


@pytest.mark.slow
def test_students_learn_from_a_converted_pytorch_teacher(tmp_path, full_size_copy, capsys):
    """--teacher-weights: a state_dict in PyTorch's layout (.npz here: the tests never import torch) is the teacher;
    nothing trains it, and the accuracy logged is that of its weights on the test images under the normalisation
    released CIFAR-10 teachers were trained with, whatever the recipe and the training subset."""
    from kdjax import convert, zoo
    from kdjax.data import load_cifar10, normalize
    from kdjax.data.normalization import NAMED

    net = zoo.network("resnet8", num_classes=10)
    params, state = net.init(jax.random.key(3))
    np.savez(tmp_path / "resnet8.npz", **convert.zoo_to_torch({"params": params, **state}))
    weights = ["--teacher-weights", str(tmp_path / "resnet8.npz"), "--student", "resnet8"]
    assert run("kd", _flags(tmp_path, full_size_copy, "--teacher", "resnet8", *weights)) == 0
    out = capsys.readouterr().out
    assert "teacher epoch" not in out
    test = load_cifar10(full_size_copy, strict=False).test.take(64)
    logits, _, _ = net.forward(params, state, normalize(jax.numpy.asarray(test.inputs), NAMED["cifar10"]),
                               train=False)
    expected = 100 * np.mean(np.argmax(logits, -1) == test.labels)
    line = f"teacher: resnet8 from {tmp_path / 'resnet8.npz'}, test accuracy {expected:.2f}%"
    assert line in out and "normalization: cifar10, mean (0.4914, 0.4822, 0.4465)" in out
    for size in ("128", "192"):  # the recipe's own-statistics normalisation gives way to the teacher's
        recipe = ["--recipe", "cifar-kd", "--train-size", size, "--epochs", "1", "--milestones", "1"]
        assert run("kd", _flags(tmp_path, full_size_copy, "--teacher", "resnet8", *weights, *recipe)) == 0
        assert line in capsys.readouterr().out
    assert run("kd", _flags(tmp_path, full_size_copy, "--teacher", "resnet20", *weights)) == 1  # another network's
    err = capsys.readouterr().err.strip()
    assert "does not match resnet20" in err and "\n" not in err


@pytest.mark.slow
def test_a_trained_teacher_exports_the_weights_teacher_weights_reads(tmp_path, full_size_copy, capsys):
    """teacher --export-weights FILE.npz writes its state_dict; distilling from that file (same normalisation)
    scores the teacher exactly as its own run did."""
    exported = tmp_path / "teachers" / "resnet8.npz"
    flags = _flags(tmp_path, full_size_copy, "--teacher", "resnet8", "--train-size", "128")
    assert run("teacher", [*flags, "--export-weights", str(exported)]) == 0
    out = capsys.readouterr().out
    (teacher_run,) = (tmp_path / "runs").glob("teacher-*")
    accuracy = json.loads((teacher_run / "members.jsonl").read_text().splitlines()[0])["test_accuracy"]
    import hashlib

    digest = hashlib.sha256(exported.read_bytes()).hexdigest()
    assert f"test accuracy {accuracy:.2f}%, weights in {exported}" in out and f"SHA-256 {digest}" in out
    with np.load(exported) as archive:
        assert "layer1.0.bn1.running_mean" in archive.files and not any("partial" in p.name for p in exported.parent.iterdir())
    assert run("kd", [*flags, "--student", "resnet8", "--teacher-weights", str(exported), "--normalize",
                      "imagenet"]) == 0
    assert f"teacher: resnet8 from {exported}, test accuracy {accuracy:.2f}%" in capsys.readouterr().out
    assert run("kd", [*flags, "--export-weights", str(exported)]) == 1  # students go to a folder
    assert "is a file; the weights go to a folder" in capsys.readouterr().err
