"""Parameters fully sharded over the mesh (fsdp): token data, a teacher restored from its checkpoint and three members
train on 4 simulated CPU devices as on one, each device holding a quarter of the student and teacher parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import four_device_worker
from jax.sharding import PartitionSpec as P

from kdjax.parallel import batch_mesh, check_layout, fsdp_spec

WORKER = Path(__file__).with_name("sharding_worker.py")


@pytest.fixture(scope="session")
def sharded_runs(tmp_path_factory) -> dict:
    return four_device_worker(tmp_path_factory, "sharding_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["4-fsdp", "resumed"])
def test_sharded_training_on_four_devices_equals_one_device(sharded_runs, run):
    """Two epochs (22 steps) of CE and KD (seed 0) and GKD (seed 1) members with a restored teacher: every parameter within
    rtol 1e-5, atol 1e-6 of the one-device run (the runs differ only in summation order: 2.5e-7 at most here).
    "resumed" trains its first epoch replicated and resumes the second from that checkpoint sharded."""
    assert sharded_runs["device_count"] == 4
    one = np.asarray(sharded_runs["params_1"])
    np.testing.assert_allclose(np.asarray(sharded_runs[f"params_{run}"]), one, rtol=1e-5, atol=1e-6)
    if run != "resumed":
        np.testing.assert_allclose(sharded_runs[f"losses_{run}"], sharded_runs["losses_1"], rtol=1e-5)


@pytest.mark.slow
def test_each_device_holds_a_quarter_of_the_parameters(sharded_runs):
    """As placed (the students' params and Adam state, the teacher's params) and as XLA's analysis of the compiled
    step counts its arguments: the model's bytes per device are 1/4 of the whole, up to the leaves too small to
    split."""
    for name in ("student", "teacher"):
        share = sharded_runs[f"{name}_bytes_per_device"] / sharded_runs[f"{name}_bytes"]
        assert 0.25 <= share < 0.26, (name, share)
    assert sharded_runs["split_leaves"] == sharded_runs["leaves"]
    other = sharded_runs["analysed_replicated"] - sharded_runs["analysed_model_bytes"]  # data, keys, orders
    share = (sharded_runs["analysed_fsdp"] - other) / sharded_runs["analysed_model_bytes"]
    assert 0.25 <= share < 0.26, share


def test_fsdp_splits_the_annotated_or_largest_dimension_that_divides():
    assert fsdp_spec((128, 64), 4) == P("batch")
    assert fsdp_spec((64, 128), 4) == P(None, "batch")
    assert fsdp_spec((3, 64, 128), 4, leading=1) == P(None, None, "batch")  # a stacked members axis is never split
    assert fsdp_spec((64, 128), 4, preferred=(0,)) == P("batch")  # a Flax annotation's dimension first
    assert fsdp_spec((6, 10), 4) == P() and fsdp_spec((), 4) == P() and fsdp_spec((128,), 1) == P()


def test_fsdp_on_one_device_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^parameter sharding fsdp splits the parameters over the devices, but the "
                                         r"mesh has one: train on more \(--devices N, N > 1\)[^\n]*$"):
        check_layout("fsdp", batch_mesh(1))
    with pytest.raises(ValueError, match="must be one of replicated, fsdp, got 'tensor'"):
        check_layout("tensor", batch_mesh(1))
    check_layout("replicated", batch_mesh(1))


def test_a_flax_partitioning_annotation_chooses_the_split_dimension():
    """`nn.with_partitioning` names the kernel's input dimension: fsdp splits it, though the output one is larger;
    the unannotated bias takes its largest (only) dimension; a stacked members axis is never split."""
    import jax
    from flax import linen as nn
    from jax.sharding import AbstractMesh

    from kdjax import methods
    from kdjax.engine.step import ProgramSpec, init_states, state_shardings
    from kdjax.network import linen_network
    from kdjax.train import build_objective

    class Annotated(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", None))
            return nn.Dense(64, kernel_init=init)(x)

    network = linen_network(Annotated(), input_shape=(8,), train_argument=None)
    assert network.annotations() == {"Dense_0": {"bias": (), "kernel": (0,)}}
    objective = build_objective(methods.CE, network)
    states = jax.eval_shape(lambda: init_states(objective, [0, 1, 2], 1e-3))
    mesh = AbstractMesh((4,), ("batch",))
    shardings = state_shardings(states, ProgramSpec(objective, 4, 8, "none", True, mesh, parameter_sharding="fsdp"))
    assert shardings.params["model"]["Dense_0"]["kernel"].spec == P(None, "batch")  # [members, 8, 64]: the 8
    assert shardings.params["model"]["Dense_0"]["bias"].spec == P(None, "batch")
    assert shardings.opt_state[0].mu["model"]["Dense_0"]["kernel"].spec == P(None, "batch")
    assert shardings.step.spec == P()
