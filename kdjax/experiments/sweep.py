"""Several seeds and a hyperparameter grid of the students, each objective's members in one compiled program.

Five seeds of all four students (the default), then a KD temperature x weight grid::

    python -m kdjax.experiments.sweep --data-dir data
    python -m kdjax.experiments.sweep --data-dir data --objectives baseline,kd --seeds 0,1,2 \\
        --sweep temperature=1,2,4,8 --sweep aux_weight=0.25,0.5,0.75

Writes `experiments/runs/sweep-<time>/`: `summary.md` (mean, std and 95 % CI per
configuration; each one against CE over the same seeds), `members.jsonl`, `config.json`
and, for a KD temperature sweep, `temperature.png`. Results in experiments/SWEEPS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import time

from kdjax.checkpoint import CheckpointMismatchError, RunCheckpoints
from kdjax.config import EXPERIMENTS, ConfigError, ExperimentConfig, add_flags, from_args
from kdjax.data import Cifar10, DataNotFoundError
from kdjax.experiments.common import (
    build_cache,
    ensure_teacher,
    load_data,
    log,
    machine_line,
    params_fingerprint,
)
from kdjax.loop import TrainingDivergedError
from kdjax.models import LightNN
from kdjax.sweep import (
    SWEEPABLE,
    Member,
    MemberResult,
    SweepMemoryError,
    SweepSettings,
    chunks,
    device_capacity_bytes,
    expand_members,
    label,
    measure_memory,
    plan_memory,
    train_members,
)
from kdjax.sweep_report import report_sections, write_members

STUDENT_NAMES = ("baseline", "kd", "cosine", "hint")
# Settings a sweep does not take: seeds come from --seeds, data is resident on one device,
# and augmentation would defeat the shared teacher-output cache.
_NOT_FOR_SWEEPS = ("seed", "loader", "devices", "distributed", "augment")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What to sweep: student objectives (experiment names), seeds, a grid, and a cap on members per program."""

    objectives: tuple[str, ...] = STUDENT_NAMES
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid: tuple[tuple[str, tuple[float, ...]], ...] = ()
    members_per_program: int = 0  # 0: as many as fit in the device's memory

    def members(self, config: ExperimentConfig) -> list[Member]:
        return expand_members([EXPERIMENTS[name] for name in self.objectives], self.seeds, dict(self.grid),
                              ce_weight=config.ce_weight, aux_weight=config.aux_weight,
                              temperature=config.temperature)


def _parse_list(flag: str, text: str, kind: type) -> tuple:
    try:
        values = tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one value")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} lists a value twice: {text!r}")
    return values


def parse_spec(args: argparse.Namespace) -> SweepSpec:
    objectives = _parse_list("--objectives", args.objectives, str)
    unknown = [name for name in objectives if name not in STUDENT_NAMES]
    if unknown:
        raise ConfigError(f"--objectives: unknown {unknown}; choose from {', '.join(STUDENT_NAMES)}")
    seeds = _parse_list("--seeds", args.seeds, int)
    grid = {}
    for item in args.sweep:
        name, _, values = item.partition("=")
        if name not in SWEEPABLE or not values:
            raise ConfigError(f"--sweep takes NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}; got {item!r}")
        if name in grid:
            raise ConfigError(f"--sweep {name} is given twice")
        grid[name] = _parse_list(f"--sweep {name}", values, float)
        if name == "temperature" and min(grid[name]) <= 0:
            raise ConfigError(f"--sweep temperature values must be > 0, got {values}")
        if min(grid[name]) < 0:
            raise ConfigError(f"--sweep {name} values must be >= 0, got {values}")
    if args.members_per_program < 0:
        raise ConfigError(f"--members-per-program must be >= 0, got {args.members_per_program}")
    return SweepSpec(objectives, seeds, tuple(grid.items()), args.members_per_program)


def parse(argv: list[str] | None) -> tuple[ExperimentConfig, SweepSpec]:
    parser = argparse.ArgumentParser(
        prog="python -m kdjax.experiments.sweep",
        description="Train the students over several seeds and a grid of loss hyperparameters, every objective's "
                    "members in one compiled program, and report mean, spread and paired comparisons against CE.",
    )
    parser.add_argument("--objectives", default=",".join(STUDENT_NAMES),
                        help=f"comma-separated students to train (default: {','.join(STUDENT_NAMES)})")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    parser.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...",
                        help=f"a grid axis, repeatable; NAME is one of {', '.join(SWEEPABLE)}; temperature "
                             "multiplies only KD members, the weights KD, cosine and hint members")
    parser.add_argument("--members-per-program", type=int, default=0,
                        help="at most this many members in one compiled program (default 0: all that fit in "
                             "the device's memory)")
    add_flags(parser, exclude=_NOT_FOR_SWEEPS)
    args = parser.parse_args(argv)
    return from_args("all", args).validate(), parse_spec(args)


def _checkpoints(config: ExperimentConfig, members: list[Member], data: Cifar10, teacher_fp: str | None,
                 cached: bool) -> RunCheckpoints:
    identity = {"model": "LightNN", "members": [label(m) for m in members], "epochs": config.epochs,
                "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                "train_size": config.train_size, "data": data.fingerprint, "teacher": teacher_fp,
                "teacher_cache": cached}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    directory = pathlib.Path(config.checkpoint_dir) / "sweeps" / f"{members[0].objective}-{digest}"
    return RunCheckpoints(directory, identity)


def run_sweep(config: ExperimentConfig, spec: SweepSpec, data: Cifar10) -> tuple[list[MemberResult], dict]:
    """Train every member of `spec`; returns the results and timings (seconds) per objective."""
    members = spec.members(config)
    settings = SweepSettings(config.epochs, config.batch_size, config.learning_rate, config.save_every_steps)
    objectives = list(dict.fromkeys(m.objective for m in members))
    log(f"sweep: {len(members)} members ({', '.join(f'{sum(m.objective == o for m in members)} {o}' for o in objectives)})")
    teacher_params = cache = teacher_fp = None
    if any(o != "ce" for o in objectives):
        teacher = ensure_teacher(config, data)
        teacher_params, teacher_fp = teacher.state.params, params_fingerprint(teacher.state.params)
        cache = build_cache(config, data, teacher, objectives)
    results, timings = [], {}
    for objective in objectives:
        group = [m for m in members if m.objective == objective]
        model = LightNN(hint=objective == "hint")
        cached = objective != "ce" and cache is not None
        teacher_arg = None if objective == "ce" else (cache if cached else teacher_params)
        per_member, shared = measure_memory(objective, model, data.train, settings, teacher_arg, cached)
        plan = plan_memory(per_member, shared, device_capacity_bytes())
        log(f"{objective}: {plan.describe()}")
        size = min(plan.fits, spec.members_per_program or len(group), len(group))
        start = time.perf_counter()
        for index, chunk in enumerate(chunks(group, size)):
            desc = objective if size == len(group) else f"{objective} ({index + 1}/{-(-len(group) // size)})"
            checkpoints = _checkpoints(config, list(chunk), data, teacher_fp, cached)
            try:
                run = train_members(chunk, data, model, settings, checkpoints, teacher=teacher_arg,
                                                 cached=cached, log=log, desc=desc)
            finally:
                checkpoints.close()
            results.extend(run.results)
        timings[objective] = time.perf_counter() - start
    return results, timings


def write_report(run_dir: pathlib.Path, config: ExperimentConfig, spec: SweepSpec, results: list[MemberResult],
                 timings: dict, argv: list[str]) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config),
                                                      "sweep": dataclasses.asdict(spec)}, indent=2) + "\n")
    write_members(run_dir / "members.jsonl", results)
    sections = report_sections(results, run_dir)
    timing = ", ".join(f"{objective} {seconds:.0f} s" for objective, seconds in timings.items())
    sections += [f"Command: `python -m kdjax.experiments.sweep {' '.join(argv)}`",
                 f"Machine: {machine_line()}. Wall time per objective (training and evaluation): {timing}."]
    report = "\n\n".join(sections) + "\n"
    (run_dir / "summary.md").write_text(report)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, spec = parse(argv)
        log(f"config: {json.dumps(dataclasses.asdict(config))}; sweep: {json.dumps(dataclasses.asdict(spec))}")
        run_dir = pathlib.Path(config.output_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            data = load_data(config)
        except ValueError as error:
            raise DataNotFoundError(str(error)) from error
        results, timings = run_sweep(config, spec, data)
        log("\n" + write_report(run_dir, config, spec, results, timings, argv) + f"\noutputs in {run_dir}")
        return 0
    except (ConfigError, DataNotFoundError, CheckpointMismatchError, TrainingDivergedError, SweepMemoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoints", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
