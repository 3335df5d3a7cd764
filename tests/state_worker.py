"""Run in a fresh process with `--xla_force_host_platform_device_count=4`: BatchNorm networks on 1 and 4 devices.

A BatchNorm teacher, trained here (fresh) or restored from its checkpoint by a second call
(restored: its arrays come back on one device), teaches BatchNorm students: teacher cache on
and off x 1 and 4 devices x 1 and 2 members, and 2 members on 4 devices with parameters and
BatchNorm statistics fully sharded (fsdp). Prints one JSON object: per combination, the
students' final params and BatchNorm statistics, flattened.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import sys

import jax
import numpy as np
from engine_helpers import batchnorm_network, train_batchnorm

from kdjax.engine import Member, model_variables


def flat(states, member: int) -> list[float]:
    tree = (states.params, states.model_state)
    return np.concatenate([np.ravel(np.asarray(leaf[member])) for leaf in jax.tree.leaves(tree)]).tolist()


def main() -> None:
    tmp = pathlib.Path(sys.argv[1])
    teachers = {}
    for kind in ("fresh", "restored"):  # the second call finds the first one's checkpoint
        (program,) = train_batchnorm(tmp, [Member.of("ce", 7)], name="teacher", devices=4)
        assert (program.trained_steps > 0) == (kind == "fresh")
        teachers[kind] = (batchnorm_network(), model_variables(program.states))
    out = {"device_count": jax.device_count(), "runs": {}}
    for kind, cached, devices, count in itertools.product(teachers, (True, False), (1, 4), (1, 2)):
        members = [Member.of("kd", 0), Member.of("kd", 1)][:count]
        name = f"{kind}-{'cache' if cached else 'live'}-{devices}-{count}"
        programs = train_batchnorm(tmp, members, name=name, teacher=teachers[kind], cached=cached, devices=devices,
                                   members_per_program=count)
        out["runs"][name] = [flat(programs[0].states, i) for i in range(count)]
    for kind, cached in itertools.product(teachers, (True, False)):
        name = f"{kind}-{'cache' if cached else 'live'}-4fsdp-2"
        programs = train_batchnorm(tmp, [Member.of("kd", 0), Member.of("kd", 1)], name=name, teacher=teachers[kind],
                                   cached=cached, devices=4, members_per_program=2, parameter_sharding="fsdp")
        out["runs"][name] = [flat(programs[0].states, i) for i in range(2)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
