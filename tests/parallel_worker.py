"""Run in a fresh process with `--xla_force_host_platform_device_count=4`: small runs on 1, 2 and 4 devices.

Prints one JSON object: final params (as lists) per run and how the batches were sharded.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np

from kdjax.checkpoint import RunCheckpoints
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, ResidentLoader, Split, StreamingLoader
from kdjax.loop import train
from kdjax.models import LightNN
from kdjax.parallel import batch_mesh


def tiny_data() -> Cifar10:
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))

    return Cifar10(split(160), split(64), "synthetic", 0.0)


def flat_params(state) -> list[float]:
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(state.params)]).tolist()


def run(tmp: pathlib.Path, name: str, devices: int, epochs: int, loader: str = "resident", ck: str | None = None):
    config = ExperimentConfig(name="baseline", epochs=epochs, batch_size=32, devices=devices, loader=loader,
                              checkpoint_dir=str(tmp / (ck or name)), output_dir=str(tmp / "runs"),
                              save_every_steps=0)
    checkpoints = RunCheckpoints(config.checkpoint_dir, {"run": "parallel-test"})
    result = train(config, tiny_data(), LightNN(), checkpoints, log=lambda _: None)
    checkpoints.close()
    return result


def main() -> None:
    tmp = pathlib.Path(sys.argv[1])
    out = {"device_count": jax.device_count()}
    mesh = batch_mesh(4)
    split = tiny_data().train
    for cls in (ResidentLoader, StreamingLoader):
        batch = next(iter(cls(split, 32, jax.random.key(0), mesh=mesh).epoch(0)))
        out[f"{cls.__name__}_rows_per_device"] = sorted(
            shard.data.shape[0] for shard in batch["image"].addressable_shards)
    for devices in (1, 4):
        out[f"params_{devices}"] = flat_params(run(tmp, f"d{devices}", devices, epochs=2).state)
    out["params_4_streaming"] = flat_params(run(tmp, "s4", 4, epochs=2, loader="streaming").state)
    run(tmp, "resume", 4, epochs=1)  # written on 4 devices ...
    resumed = run(tmp, "resume2", 2, epochs=2, ck="resume")  # ... resumed on 2
    out["params_4_then_2"] = flat_params(resumed.state)
    out["resumed_sharding_devices"] = len(jax.tree.leaves(resumed.state.params)[0].sharding.device_set)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
