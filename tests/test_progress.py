"""Progress inside an epoch: a line every N steps where the output is no terminal, the rate without compilation."""

from __future__ import annotations

import numpy as np
import pytest

from kdjax import progress
from kdjax.experiments.common import run


def test_a_log_gets_a_line_every_n_steps_with_a_rate_that_leaves_the_first_step_out(monkeypatch):
    clock = iter([130.0, 131.0, 132.0, 133.0, 134.0])  # the epoch began at 100: its first step compiled for 30 s
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    lines = []
    bar = progress.EpochProgress("teacher 1/3", 6, 0, "images", log=lines.append, log_every=2, terminal=False)
    bar.first_step_done(1, 64)  # at 130 s
    for done in range(2, 6):  # a step a second
        bar.update(done, 64 * done, "1.2345")
    bar.close()
    assert lines == ["teacher 1/3: step 2/6, loss 1.2345, 64 images/s, 4 s left of the epoch",
                     "teacher 1/3: step 4/6, loss 1.2345, 64 images/s, 2 s left of the epoch"]


def test_durations_read_as_people_write_them():
    assert [progress.duration_text(s) for s in (0.4, 59, 95, 3599, 4000)] == [
        "0 s", "59 s", "1 min 35 s", "59 min 59 s", "1 h 06 min"]


@pytest.mark.slow
def test_an_epoch_in_a_log_reports_its_steps(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.arange(160) % 3
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8), y_train=labels[:128],
             x_test=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), y_test=labels[128:])
    flags = ["--dataset", f"npz:{tmp_path / 'd.npz'}", "--student", "resnet8", "--epochs", "1", "--batch-size",
             "16", "--log-every-steps", "4", "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir",
             str(tmp_path / "runs")]
    assert run("baseline", flags) == 0
    out = capsys.readouterr().out
    assert "student 1/1: step 4/8, loss " in out and " images/s, " in out and "left of the epoch" in out
    assert "step 8/8" not in out  # the epoch's own line says the rest
