"""The examples run end to end on synthetic data: models kdjax does not ship, linen and NNX students."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script,student", [("resnet_to_cnn.py", "SmallCNN"), ("nnx_student.py", "NnxCNN")])
def test_example_distils_through_the_engine(script, student, tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--synthetic", "--epochs", "1", "--train-size",
                           "128", "--seeds", "0", "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "teacher SmallResNet:" in done.stdout
    assert f"{student} ce:" in done.stdout and f"{student} hint:" in done.stdout
    assert (tmp_path / f"student-{student}" / "hint").is_dir()


@pytest.mark.slow
def test_char_lm_example_distils_a_users_transformer_through_the_engine(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "char_lm_distillation.py"), "--epochs", "1",
                           "--train-size", "64", "--window", "32", "--seeds", "0", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines() if " bits/char" in line)
    assert set(lines) == {"teacher causal_conv_128x5 (CE)", *(f"student TinyTransformer ({m})" for m in
                                                             ("ce", "kd", "gkd"))}
    assert all(0 < float(value.split()[0]) < 10 for value in lines.values())
    # Next-token data: no teacher cache, so the methods reading the teacher share one program and its forward.
    assert (tmp_path / "student" / "kd+gkd").is_dir() and (tmp_path / "student" / "ce").is_dir()
