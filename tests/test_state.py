"""Model state (BatchNorm statistics) through the engine: carried, updated in training, frozen in inference,
checkpointed, checked for NaN, refused where it cannot work, and the same on 1 and 4 devices."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import four_device_worker
from engine_helpers import BatchNormCNN, batchnorm_network, tiny_data, train_batchnorm
from flax import linen as nn
from flax import nnx

from kdjax.data import normalize
from kdjax.engine import Member, TrainingDivergedError, model_variables
from kdjax.methods import Method
from kdjax.network import linen_network, nnx_network
from kdjax.teacher import Teacher
from kdjax.train import Objective, create_train_state, train_step

IMAGES = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
LABELS = jax.random.randint(jax.random.key(1), (16,), 0, 10)


def test_linen_state_is_updated_in_training_and_read_in_inference():
    network, module = batchnorm_network(), BatchNormCNN()
    params, state = network.init(jax.random.key(0))
    assert set(state) == {"batch_stats"}
    key = jax.random.key(2)
    logits, _, new_state = network.forward(params, state, IMAGES, train=True, key=key)
    expected, updated = module.apply({"params": params, **state}, IMAGES, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": key})
    np.testing.assert_array_equal(logits, expected)
    jax.tree.map(np.testing.assert_array_equal, new_state, dict(updated))
    assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    inference, _, kept = network.forward(params, new_state, IMAGES, train=False)
    np.testing.assert_array_equal(inference, module.apply({"params": params, **new_state}, IMAGES))
    assert all(a is b for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(new_state)))  # returned untouched
    teacher = Teacher(network, params, new_state).outputs({"inputs": IMAGES}, ("logits",))
    np.testing.assert_array_equal(teacher["logits"], inference)


class NnxBatchNormCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=(2, 2), rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2)))


def test_nnx_batch_stats_are_the_state_a_trained_member_is_evaluated_with(tmp_path):
    """The NNX student's running statistics move in training and its evaluation uses them."""
    from kdjax.checkpoint import RunCheckpoints
    from kdjax.engine import Settings, train_members

    network = nnx_network(NnxBatchNormCNN, input_shape=(32, 32, 3))
    data = tiny_data()
    (program,) = train_members([Member.of("ce", 0)], network, data.train, data.test, Settings(epochs=1, batch_size=32),
                               lambda chunk: RunCheckpoints(tmp_path / "nnx", {"test": "nnx"}), log=lambda _: None)
    params, state = model_variables(program.states)
    initial = network.init(jax.random.fold_in(jax.random.key(0), 0))[1]
    assert not np.allclose(state["norm"]["mean"].get_value(), initial["norm"]["mean"].get_value())
    model = nnx.merge(nnx.graphdef(NnxBatchNormCNN(nnx.Rngs(0))), params, state)
    model.eval()
    logits = model(normalize(data.test.inputs))
    expected = 100.0 * np.mean(np.argmax(logits, -1) == data.test.labels)
    np.testing.assert_allclose(program.results[0].test_accuracy, expected, rtol=1e-6)


class UpdatesInInference(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(10)(nn.BatchNorm(use_running_average=False)(x.mean(axis=(1, 2))))


class NnxCounter(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.head = nnx.Linear(3, 10, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros(()))

    def __call__(self, x):
        self.calls[...] = self.calls[...] + 1
        return self.head(x.mean(axis=(1, 2)))


def test_a_model_that_writes_its_state_in_inference_is_refused_when_wrapped():
    with pytest.raises(ValueError, match=r"updates its state \['batch_stats'\].*use_running_average=not train"):
        linen_network(UpdatesInInference(), input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"NnxCounter updates its state \['calls'\]"):
        nnx_network(NnxCounter, input_shape=(32, 32, 3))


class BatchNormRegressor(nn.Module):
    """A FitNets-style connector: 3x3 conv, BatchNorm, ReLU (always training: adapters run in training only)."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9)(nn.Conv(self.features, (3, 3))(x)))


def test_an_adapter_with_batchnorm_carries_its_statistics():
    network = batchnorm_network()
    method = Method("bn-hint", "hint through a BatchNorm connector", reads=("feature_map",),
                    loss=lambda s, t, hp, c: jnp.mean((s["feature_map"] - t["feature_map"]) ** 2),
                    adapter=lambda s, t: BatchNormRegressor(t[-1]), adapted="feature_map")
    objective = Objective(method, network, BatchNormRegressor(16))
    state = create_train_state(objective, jax.random.key(0))
    assert set(state.model_state) == {"model", "adapter"} and "batch_stats" in state.model_state["adapter"]
    teacher = Teacher(network, *network.init(jax.random.key(5))).outputs({"inputs": IMAGES}, method.reads)
    new, metrics = jax.jit(lambda s: train_step(s, {"inputs": IMAGES, "label": LABELS}, jax.random.key(1), teacher,
                                                method.resolve(), objective=objective))(state)
    assert bool(metrics["finite"])
    for part in ("model", "adapter"):
        before, after = jax.tree.leaves(state.model_state[part]), jax.tree.leaves(new.model_state[part])
        assert all(not np.allclose(a, b) for a, b in zip(before, after) if a.size > 1)


class Explodes(nn.Module):
    """Finite outputs while a state entry grows x1e30 per training call: past float32's range (Inf) on the second."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        scale = self.variable("counters", "scale", lambda: jnp.ones(()))
        if train and not self.is_initializing():
            scale.value = scale.value * 1e30
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def test_nonfinite_model_state_stops_training_like_a_nonfinite_loss(tmp_path):
    from kdjax.checkpoint import RunCheckpoints
    from kdjax.engine import Settings, train_members

    data = tiny_data()
    network = linen_network(Explodes(), input_shape=(32, 32, 3))
    with pytest.raises(TrainingDivergedError, match=r"loss or model state became NaN/Inf for ce\[seed=0\] at step 2"):
        train_members([Member.of("ce", 0)], network, data.train, data.test, Settings(epochs=1, batch_size=32),
                      lambda chunk: RunCheckpoints(tmp_path / "x", {"test": "x"}), log=lambda _: None)


def test_resuming_restores_the_statistics_bitwise(tmp_path):
    straight = train_batchnorm(tmp_path, [Member.of("ce", 3)], name="straight", epochs=2)[0].states
    train_batchnorm(tmp_path, [Member.of("ce", 3)], name="resumed", epochs=1)
    resumed = train_batchnorm(tmp_path, [Member.of("ce", 3)], name="resumed", epochs=2)[0].states
    jax.tree.map(np.testing.assert_array_equal, (resumed.params, resumed.model_state),
                 (straight.params, straight.model_state))


@pytest.fixture(scope="session")
def four_device_runs(tmp_path_factory) -> dict:
    return four_device_worker(tmp_path_factory, "state_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("teacher, cache", list(itertools.product(("fresh", "restored"), ("cache", "live"))))
def test_batchnorm_members_train_alike_on_one_and_four_devices(four_device_runs, teacher, cache):
    """Every combination trains (a restored teacher once crashed multi-device programs). BatchNorm under a sharded
    batch normalises by the global batch's statistics, so 4 devices match 1 up to float summation order: rtol 1e-4,
    atol 1e-5 after one epoch (the tolerance the stateless engine tests use); so do 4 devices with the parameters,
    Adam state and BatchNorm statistics fully sharded (fsdp)."""
    runs = four_device_runs["runs"]
    assert four_device_runs["device_count"] == 4
    reference = np.asarray(runs[f"{teacher}-{cache}-1-1"][0])
    for devices, count in [*itertools.product((1, 4), (1, 2)), ("4fsdp", 2)]:
        members = runs[f"{teacher}-{cache}-{devices}-{count}"]
        np.testing.assert_allclose(members[0], reference, rtol=1e-4, atol=1e-5, err_msg=f"{devices} x {count}")
        if count == 2:
            assert not np.allclose(members[1], members[0])
    np.testing.assert_allclose(runs[f"{teacher}-{'live' if cache == 'cache' else 'cache'}-1-1"][0], reference,
                               rtol=1e-4, atol=1e-5)
