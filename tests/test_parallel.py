"""Members x data parallelism: two members on 4 simulated CPU devices train like on 1; checkpoints move between device counts."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import four_device_worker

from kdjax.parallel import batch_mesh, check_batch_size

WORKER = Path(__file__).with_name("parallel_worker.py")


def test_batch_size_must_split_over_the_devices():
    mesh = batch_mesh(1)
    check_batch_size(128, mesh)
    fake = type("FakeMesh", (), {"devices": np.empty(3)})()
    with pytest.raises(ValueError, match=r"batch size 128 does not split evenly over 3 devices.*--batch-size 126 or 129"):
        check_batch_size(128, fake)


def test_asking_for_more_devices_than_exist_is_an_error():
    with pytest.raises(ValueError, match=rf"asked for 99 devices but {jax.device_count()} are available"):
        batch_mesh(99)


@pytest.fixture(scope="session")
def four_device_runs(tmp_path_factory) -> dict:
    return four_device_worker(tmp_path_factory, "parallel_worker.py")


@pytest.mark.slow
def test_batches_are_split_across_the_devices(four_device_runs):
    assert four_device_runs["device_count"] == 4
    assert four_device_runs["rows_per_device"] == [8, 8, 8, 8]


def test_four_devices_train_like_one(four_device_runs):
    one = np.asarray(four_device_runs["params_1"])
    four = np.asarray(four_device_runs["params_4"])
    assert not np.array_equal(one, np.zeros_like(one))
    np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)


def test_checkpoint_written_on_four_devices_resumes_on_two(four_device_runs):
    np.testing.assert_allclose(four_device_runs["params_4_then_2"], four_device_runs["params_4"], rtol=1e-4, atol=1e-5)
    assert four_device_runs["resumed_sharding_devices"] == 2
