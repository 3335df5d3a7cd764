"""The teachers kept in experiments/teachers/: each file is the one its record names, and scores what the record
says through --teacher-weights (on the first 1,000 test images of the local CIFAR-10 copy)."""

from __future__ import annotations

import hashlib
import pathlib
import re

import pytest

from kdjax.experiments.common import run

TEACHERS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "teachers"


def _record(name: str) -> tuple[str, float]:
    text = (TEACHERS / f"{name}.md").read_text()
    digest = re.search(r"SHA-256: `([0-9a-f]{64})`", text).group(1)
    accuracy = float(re.search(r"first 1,000 test images[^:]*: ([0-9.]+)%", text).group(1))
    return digest, accuracy


@pytest.mark.slow
def test_the_kept_resnet56_teacher_scores_its_recorded_accuracy(tmp_path, cifar10_copy, capsys):
    weights = TEACHERS / "resnet56-cifar10.npz"
    digest, accuracy = _record("resnet56-cifar10")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    flags = ["--data-dir", str(cifar10_copy), "--teacher", "resnet56", "--teacher-weights", str(weights),
             "--student", "resnet8", "--train-size", "64", "--test-size", "1000", "--batch-size", "64", "--epochs",
             "1", "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs")]
    assert run("kd", flags) == 0
    assert f"teacher: resnet56 from {weights}, test accuracy {accuracy:.2f}%" in capsys.readouterr().out
