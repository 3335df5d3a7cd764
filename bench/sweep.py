"""An N-member sweep against the same N runs one after another, and against one run alone.

`python -m kdjax.bench.sweep [--data-dir PATH] [--members 8]`: KD students with the teacher-output
cache (the teacher's weights do not change the time), each run a full `kdjax.loop.train` /
`kdjax.sweep.train_members` call on a reduced split, compilation and evaluation included,
plus the steady-state step time of each. The sides take turns for `--rounds`; medians are
reported. Writes the "Sweeps" section of experiments/BENCH.md (the rest of the file is left
as `python -m kdjax.bench` wrote it) and experiments/BENCH-sweep.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.bench.common import SWEEP_SECTION, synthetic_split
from kdjax.bench.profile import median_ms
from kdjax.checkpoint import RunCheckpoints
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, ResidentLoader, Split, load_cifar10
from kdjax.loop import train
from kdjax.models import DeepNN, LightNN
from kdjax.sweep import (
    Member,
    SweepSettings,
    init_stacked_state,
    make_sweep_step,
    stack_weights,
    train_members,
)
from kdjax.teacher_cache import compute_teacher_cache
from kdjax.train import LossConfig, create_train_state, make_train_step

SECTION_START, SECTION_END = SWEEP_SECTION


def _data(args) -> Cifar10:
    if args.data_dir:
        return load_cifar10(args.data_dir).subset(args.train_size, args.test_size)
    return Cifar10(Split(*synthetic_split(args.train_size, 0)), Split(*synthetic_split(args.test_size, 1)),
                   "synthetic", 0.0)


def one_run(data: Cifar10, cache, seed: int, epochs: int, workdir: pathlib.Path) -> tuple[float, float]:
    """(wall seconds of a whole single run, its training seconds) for one KD student."""
    config = ExperimentConfig(name="kd", epochs=epochs, seed=seed, save_every_steps=0,
                              checkpoint_dir=str(workdir / f"solo-{seed}"), output_dir=str(workdir / "runs"))
    _forget_compilations()
    start = time.perf_counter()
    checkpoints = RunCheckpoints(config.checkpoint_dir, {"bench": seed})
    result = train(config, data, LightNN(), checkpoints, teacher_cache=cache, log=lambda _: None)
    checkpoints.close()
    return time.perf_counter() - start, result.train_seconds


def _forget_compilations() -> None:
    """Every timed run compiles afresh, as a new process would (rounds share one process)."""
    jax.clear_caches()
    make_sweep_step.cache_clear()


def sweep_run(data: Cifar10, cache, members: int, epochs: int, workdir: pathlib.Path) -> tuple[float, float]:
    """(wall seconds of a whole `members`-member sweep, its training seconds)."""
    _forget_compilations()
    start = time.perf_counter()
    checkpoints = RunCheckpoints(workdir / f"sweep-{members}", {"bench": members})
    run = train_members([Member("kd", seed) for seed in range(members)], data, LightNN(),
                        SweepSettings(epochs=epochs, save_every_steps=0), checkpoints, teacher=cache, cached=True,
                        log=lambda _: None, desc=f"sweep x{members}")
    checkpoints.close()
    return time.perf_counter() - start, run.train_seconds


def step_ms(data: Cifar10, cache, members: int, repeats: int = 20) -> tuple[float, float]:
    """Steady-state ms of (one run's KD step, a `members`-member sweep step), median over `repeats` after a warm-up."""
    split = data.train
    images, labels = jax.device_put((split.images, split.labels))
    batch = _first_batch(split)
    solo = make_train_step(LossConfig("kd"), cached=True)
    state, key = create_train_state(LightNN(), jax.random.key(0)), jax.random.key(1)
    members_list = [Member("kd", seed) for seed in range(members)]
    sweep = make_sweep_step("kd", 128, len(split), True)
    states = init_stacked_state(LightNN(), range(members), learning_rate=1e-3)
    orders = jnp.tile(jnp.arange(-(-len(split) // 128) * 128, dtype=jnp.int32) % len(split), (members, 1))
    keys, weights = jnp.stack([jax.random.key(s) for s in range(members)]), stack_weights(members_list)
    solo_ms = median_ms(solo, state, batch, key, cache, repeats=repeats)
    sweep_ms = median_ms(sweep, states, orders, np.int32(0), images, labels, cache, keys, weights, repeats=repeats)
    return solo_ms, sweep_ms


def _first_batch(split: Split) -> dict:
    loader = ResidentLoader(split, 128, jax.random.key(0), shuffle=False)
    return next(iter(loader.epoch(0)))


def write_section(bench_md: pathlib.Path, section: str) -> None:
    """Put `section` between the markers in `bench_md`, replacing an earlier one, keeping the rest."""
    text = bench_md.read_text() if bench_md.exists() else "# kdjax benchmarks\n"
    block = f"{SECTION_START}\n{section}\n{SECTION_END}"
    if SECTION_START in text and SECTION_END in text:
        before, rest = text.split(SECTION_START, 1)
        text = before + block + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    bench_md.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8, help="members of the sweep (default 8)")
    parser.add_argument("--train-size", type=int, default=5_000, help="training images (default 5,000)")
    parser.add_argument("--test-size", type=int, default=1_000, help="test images (default 1,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="turns each side takes (medians reported)")
    parser.add_argument("--data-dir", default=None, help="local CIFAR-10 copy (default: synthetic images)")
    parser.add_argument("--out", default="experiments", help="folder holding BENCH.md")
    args = parser.parse_args(argv)
    if args.members < 1 or args.rounds < 1:
        parser.error("--members and --rounds must be >= 1")
    data = _data(args)
    teacher_params = create_train_state(DeepNN(), jax.random.key(0)).params
    cache = compute_teacher_cache(teacher_params, data.train, ["logits"])
    steps = args.epochs * -(-len(data.train) // 128)
    figures: dict[str, list[float]] = {"one": [], "sequential": [], "sweep": [], "one_step_ms": [],
                                       "sweep_step_ms": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            workdir = pathlib.Path(tmp) / str(round_index)
            wall, _ = sweep_run(data, cache, args.members, args.epochs, workdir)
            figures["sweep"].append(wall)
            runs = [one_run(data, cache, seed, args.epochs, workdir) for seed in range(args.members)]
            figures["sequential"].append(sum(wall for wall, _ in runs))
            figures["one"].append(statistics.median(wall for wall, _ in runs))
            one_ms, sweep_ms = step_ms(data, cache, args.members)
            figures["one_step_ms"].append(one_ms)
            figures["sweep_step_ms"].append(sweep_ms)
            print(f"round {round_index + 1}: sweep {wall:.1f} s, {args.members} sequential runs "
                  f"{figures['sequential'][-1]:.1f} s, one run {runs[0][0]:.1f} s", flush=True)
    median = {key: statistics.median(values) for key, values in figures.items()}
    n = args.members
    rows = [
        ("one run alone (wall, compile and eval included; median of the runs)", f"{median['one']:.1f} s", ""),
        (f"{n} runs one after another", f"{median['sequential']:.1f} s", ""),
        (f"{n}-member sweep", f"{median['sweep']:.1f} s",
         (f"{median['sweep'] / median['one']:.2f}x the time of one run; "
          f"{median['sequential'] / median['sweep']:.2f}x the speed of {n} sequential runs")),
        ("train step, one run (steady state)", f"{median['one_step_ms']:.1f} ms", ""),
        (f"train step, {n}-member sweep (steady state)", f"{median['sweep_step_ms']:.1f} ms",
         (f"{median['sweep_step_ms'] / n:.1f} ms per member, "
          f"{median['sweep_step_ms'] / median['one_step_ms']:.2f}x one run's step")),
    ]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m kdjax.bench.sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    source = "local CIFAR-10" if args.data_dir else "synthetic images"
    section = "\n".join([
        "## Sweeps: N members in one program vs N runs",
        "",
        (f"`{command.strip()}` — {when}; {platform.machine()}, {os.cpu_count()} CPUs, "
         f"{jax.devices()[0].device_kind}, jax {jax.__version__}. KD students with the teacher-output cache, "
         f"{args.epochs} epoch(s) on {len(data.train):,} training / {len(data.test):,} test images ({source}), "
         f"batch 128, {steps} steps; median of {args.rounds} rounds."),
        "",
        "| measurement | time | |",
        "|---|---:|---|",
        *(f"| {name} | {value} | {note} |" for name, value, note in rows),
    ])
    print(section)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_section(out / "BENCH.md", section)
    (out / "BENCH-sweep.json").write_text(json.dumps({"command": command, "args": vars(args),
                                                      "seconds": figures, "steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
