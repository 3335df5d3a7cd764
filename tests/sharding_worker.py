"""Run in a fresh process with `--xla_force_host_platform_device_count=4`: token data, a restored teacher, several
members, on 1 device and on 4 with parameters fully sharded (fsdp), and on 4 resumed from replicated to sharded.

Prints one JSON object: each run's final params (flattened; "resumed": one epoch replicated, the second sharded), the teacher's and students' per-device parameter bytes
as placed and as the compiled program step's memory analysis counts them, and the shardings the step hands back.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np

from kdjax import methods, zoo
from kdjax.checkpoint import RunCheckpoints
from kdjax.data import from_tokens
from kdjax.engine import Member, Settings, train_members
from kdjax.engine.memory import nbytes, program_analysis
from kdjax.engine.step import init_states
from kdjax.parallel import batch_mesh, per_device_bytes
from kdjax.teacher import Teacher
from kdjax.train import build_objective

TIME, VOCAB = 16, 64
MEMBERS = [Member.of("ce", 0), Member.of("kd", 0), Member.of("gkd", 1)]


def data():
    rng = np.random.default_rng(0)
    steps = np.where(rng.random(4000) < 0.8, 1, rng.integers(0, VOCAB, 4000))
    return from_tokens((np.cumsum(steps) % VOCAB).astype(np.int32), time=TIME, vocab_size=VOCAB, test_fraction=0.2)


def network(name: str):
    return zoo.network(name, num_classes=VOCAB, input_shape=(TIME,))


def restored_teacher(tmp: pathlib.Path, tokens) -> Teacher:
    """A causal_conv_128x5 trained for an epoch on one device, then read back from its checkpoint."""
    teacher = network("causal_conv_128x5")
    settings = Settings(epochs=1, batch_size=16, learning_rate=3e-3, save_every_steps=0, devices=1)
    train_members([Member.of("ce", 42)], teacher, tokens.train, tokens.test, settings,
                  lambda chunk: RunCheckpoints(tmp / "teacher", {"test": "teacher"}), log=lambda _: None)
    template = init_states(build_objective(methods.CE, teacher), [42], 3e-3)
    checkpoints = RunCheckpoints(tmp / "teacher", {"test": "teacher"})
    restored, _, _, _ = checkpoints.restore_latest(template, jax.random.split(jax.random.key(0), 1))
    checkpoints.close()
    return Teacher(teacher, *jax.tree.map(lambda leaf: leaf[0], (restored.params["model"],
                                                                  restored.model_state["model"])))


def train(tmp: pathlib.Path, tokens, teacher: Teacher, name: str, devices: int, sharding: str, epochs: int = 2):
    settings = Settings(epochs=epochs, batch_size=16, learning_rate=3e-3, save_every_steps=0, devices=devices,
                        parameter_sharding=sharding, members_per_program=len(MEMBERS))
    programs = train_members(MEMBERS, network("causal_conv_32x2"), tokens.train, tokens.test, settings,
                             lambda chunk: RunCheckpoints(tmp / name / chunk[0].name, {"test": name}),
                             teacher=teacher, log=lambda _: None)
    return programs


def flat(programs) -> list[float]:
    leaves = [leaf for program in programs for leaf in jax.tree.leaves(program.states.params)]
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves]).tolist()


def analysed_argument_bytes(tokens, teacher: Teacher, sharding: str) -> int:
    student = network("causal_conv_32x2")
    objective = build_objective(methods.get("kd"), student, teacher.network)
    settings = Settings(batch_size=16, devices=4, parameter_sharding=sharding)
    return program_analysis(objective, tokens.train, settings, teacher, batch_mesh(4)).argument_size_in_bytes


def main() -> None:
    tmp = pathlib.Path(sys.argv[1])
    tokens = data()
    teacher = restored_teacher(tmp, tokens)
    out = {"device_count": jax.device_count()}
    runs = {"1": (1, "replicated"), "4-fsdp": (4, "fsdp")}  # 4 replicated against 1: tests/test_parallel.py
    for name, (devices, sharding) in runs.items():
        programs = train(tmp, tokens, teacher, name, devices, sharding)
        out[f"params_{name}"] = flat(programs)
        out[f"losses_{name}"] = [r.history[-1]["test_loss"] for p in programs for r in p.results]
        if name == "4-fsdp":
            states = programs[0].states
            out["student_bytes"] = nbytes(states.params) + nbytes(states.opt_state)
            out["student_bytes_per_device"] = per_device_bytes((states.params, states.opt_state))
            out["split_leaves"] = sum(len(leaf.sharding.device_set) == 4 and not leaf.sharding.is_fully_replicated
                                      for leaf in jax.tree.leaves(states.params))
            out["leaves"] = len(jax.tree.leaves(states.params))
    train(tmp, tokens, teacher, "resumed", 4, "replicated", epochs=1)  # one epoch replicated ...
    out["params_resumed"] = flat(train(tmp, tokens, teacher, "resumed", 4, "fsdp"))  # ... the second sharded
    placed = teacher.on(batch_mesh(4), "fsdp")
    out["teacher_bytes"] = nbytes(teacher.params)
    out["teacher_bytes_per_device"] = per_device_bytes(placed.params)
    replicated, sharded = (analysed_argument_bytes(tokens, teacher, s) for s in ("replicated", "fsdp"))
    objective = build_objective(methods.get("kd"), network("causal_conv_32x2"), teacher.network)
    state_bytes = nbytes(jax.eval_shape(lambda: init_states(objective, [0], 1e-3)))
    out["analysed_model_bytes"] = state_bytes + out["teacher_bytes"]
    out["analysed_replicated"], out["analysed_fsdp"] = replicated, sharded
    print(json.dumps(out))


if __name__ == "__main__":
    main()
