"""Run in a fresh process with `--xla_force_host_platform_device_count=4`: two-member programs on 1, 2 and 4 devices.

Prints one JSON object: final params (as lists) per run and how the batches were sharded.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from engine_helpers import run_members, tiny_data

from kdjax.data import ResidentLoader
from kdjax.engine import Member
from kdjax.parallel import batch_mesh

MEMBERS = [Member.of("kd", 0), Member.of("kd", 1, temperature=4.0)]


def flat_params(program) -> list[float]:
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(program.states.params)]).tolist()


def run(tmp: pathlib.Path, name: str, devices: int, epochs: int):
    programs = []
    run_members(tmp, MEMBERS, epochs=epochs, name=name, devices=devices, programs_out=programs,
                members_per_program=2)
    return programs[0]


def main() -> None:
    tmp = pathlib.Path(sys.argv[1])
    out = {"device_count": jax.device_count()}
    batch = next(iter(ResidentLoader(tiny_data().train, 32, jax.random.key(0), mesh=batch_mesh(4)).epoch(0)))
    out["rows_per_device"] = sorted(shard.data.shape[0] for shard in batch["inputs"].addressable_shards)
    for devices in (1, 4):
        out[f"params_{devices}"] = flat_params(run(tmp, f"d{devices}", devices, epochs=2))
    run(tmp, "resume", 4, epochs=1)  # written on 4 devices ...
    resumed = run(tmp, "resume", 2, epochs=2)  # ... resumed on 2
    out["params_4_then_2"] = flat_params(resumed)
    out["resumed_sharding_devices"] = len(jax.tree.leaves(resumed.states.params)[0].sharding.device_set)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
