"""A simulated two-host launch: 2 processes x 2 CPU devices (SLURM variables, gloo collectives), each streaming
only its rows of every batch, match 1 process x 4 devices with the split resident; launched again, both processes
restore the run's checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _members(run_root) -> list[dict]:
    (members,) = run_root.glob("baseline-*/members.jsonl")
    return [json.loads(line) for line in members.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one_and_only_the_first_writes(tmp_path, full_size_copy):
    flags = ["--data-dir", str(full_size_copy), "--train-size", "256", "--test-size", "128", "--batch-size", "64",
             "--seeds", "0,1", "--save-every-steps", "0"]
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}

    def command(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "kdjax.experiments.baseline", *flags, "--checkpoint-dir",
                str(tmp_path / name / "ck"), "--output-dir", str(tmp_path / name / "runs"), *extra]

    single = subprocess.run(command("single", "--epochs", "1"), capture_output=True, text=True, timeout=600,
                            env=base | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert single.returncode == 0, single.stderr[-2000:]

    def pair(epochs: int) -> list[str]:
        slurm = {"SLURM_JOB_ID": str(_free_port()), "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                 "SLURM_STEP_NUM_NODES": "1", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                 "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        processes = [subprocess.Popen(command("pair", "--distributed", "--data-loader", "streaming", "--epochs",
                                              str(epochs)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=base | slurm | {"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
                     for i in range(2)]
        outputs = [process.communicate(timeout=600) for process in processes]
        for process, (_, err) in zip(processes, outputs):
            assert process.returncode == 0, err[-2000:]
        return [out for out, _ in outputs]

    pair(1)  # both processes write the checkpoint; launched again, both restore it and train nothing
    shutil.rmtree(tmp_path / "pair" / "runs")  # the first launch's report
    outputs = pair(1)
    # Process 0 says so; process 1 logs nothing, but had it not restored it would have trained alone and waited on
    # process 0's collectives.
    assert "already trained for 1 epochs" in outputs[0]
    assert "outputs in" in outputs[0] and "outputs in" not in outputs[1]  # only process 0 reports
    assert len(list((tmp_path / "pair" / "runs").iterdir())) == 1
    ones, pairs = _members(tmp_path / "single" / "runs"), _members(tmp_path / "pair" / "runs")
    assert [r["seed"] for r in pairs] == [0, 1]
    np.testing.assert_allclose([r["test_loss"] for r in pairs], [r["test_loss"] for r in ones], rtol=1e-4)
