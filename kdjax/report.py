"""A run's outputs: config, per-member metrics, the Markdown summary with statistics, and plots.

`write_run(run_dir, config, teacher, students)` writes `config.json`, `members.jsonl` (one
line per member: its role, settings, final figures and per-epoch history), `summary.md` (per
configuration: mean, std and 95 % t-interval of the test accuracy, training wall time; each
configuration minus CE over the same seeds, with the paired t-test and Holm's adjustment for
the number of configurations compared), `accuracy.png` /
`loss.png` (per epoch, mean over seeds with the range as a band, one line per
configuration), with more than two configurations `ranking.png` (sorted by mean, CI bars,
CE's interval as a band), and with paired seeds over several epochs `difference.png` and a
table of the epochs at which each configuration is ahead of or behind CE beyond the interval.
`read_run` loads a run folder back and `compare_runs` reports the students of several runs as
one, paired by seed (e.g. a sweep with the CE baseline that another command trained).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from kdjax.engine import Member, MemberResult
from kdjax.methods import Method
from kdjax.plots import plot_curves, plot_differences, plot_ranking
from kdjax.tables import (
    best_epoch,
    epoch_differences,
    epoch_table,
    group_by_config,
    paired_table,
    score_for,
    sources_table,
    summary_table,
    teacher_warnings,
)
from kdjax.tasks import BITS_PER_TOKEN


class RunFolderError(ValueError):
    """A folder that does not hold a run kdjax wrote, or a comparison that cannot be made; the message says which."""


def member_row(result: MemberResult, role: str) -> dict[str, Any]:
    return {"role": role, "label": result.member.label, "network": result.network, "method": result.member.name,
            "title": result.member.method.title,
            "seed": result.member.seed, "hyperparameters": dict(result.member.hyperparameters),
            "parameters": result.parameters, "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
            "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
            **({"validation_accuracy": result.validation_accuracy} if result.validation_accuracy is not None else {}),
            **({"view_accuracy": result.view_accuracy} if result.view_accuracy is not None else {}),
            **({"program": result.program} if result.program else {}),
            "history": result.history}


def summary(config: dict[str, Any], teacher: Sequence[MemberResult], students: Sequence[MemberResult]) -> str:
    """The Markdown summary of a run."""
    score = score_for(config)
    sections = [f"# {config['name']}"]
    if config.get("sources"):
        sections += ["Students of several runs, paired by seed.", sources_table(config["sources"])]
    if teacher and students:
        accuracies = ", ".join(f"{score.text(score.of(r))}{' bits per token' * score.lower_is_better} "
                               f"(seed {r.member.seed})" for r in teacher)
        epochs = len(teacher[0].history)
        trained = (f"from {config['teacher_weights']}" if config.get("teacher_weights")
                   else f"after {epochs} epoch{'s' * (epochs != 1)}")
        line = f"Teacher: {teacher[0].network}, {accuracies} {trained}"
        if teacher[0].view_accuracy is not None:
            augment = config.get("augment", "augmented")
            line += f"; {teacher[0].view_accuracy:.2f}% on one {augment} view of each test image"
        sections.append(line + ".")
    if config.get("num_classes"):
        sections.append(f"Data: {config.get('dataset')}, {config['num_classes']:,} classes, "
                        f"{config.get('train_examples', 0):,} training and {config.get('test_examples', 0):,} test "
                        "examples.")
    sections += [f"**Warning:** {warning}." for warning in
                 teacher_warnings(teacher, students, score, config.get("num_classes"))]
    sections += [f"## Test {score.name} per configuration", summary_table(students or teacher, score)]
    if any(r.program and "+" in r.program for r in students):
        sections.append("Methods joined by + trained in one compiled program (members of one seed share each batch "
                        "and teacher forward): its wall time is the whole program's, shared between them.")
    if score is BITS_PER_TOKEN:
        sections.append("Bits per token: the mean cross-entropy per test token in bits (bits per character for a "
                        "character vocabulary); lower is better.")
    paired = paired_table(students, score)
    if paired:
        sections += ["## Against CE over the same seeds", paired]
    if any(len(r.history) > 1 for r in students):
        best = best_epoch(score)
        sections += ["## At each member's best epoch",
                     f"The tables above take each member's last epoch (RepDistiller's convention); these take its "
                     f"best test {score.name} over its epochs (mdistiller's), which favours noisier configurations.",
                     summary_table(students, best)]
        best_paired = paired_table(students, best)
        if best_paired:
            sections.append(best_paired)
    by_epoch = epoch_table(students, score)
    if by_epoch:
        sections += ["## Against CE, epoch by epoch", by_epoch, "![difference to CE per epoch](difference.png)"]
    if len(group_by_config(students)) > 2:
        sections += [f"![configurations by mean test {score.name}](ranking.png)"]
    sections += [f"![test {score.name} per epoch](accuracy.png)",
                 "Training loss per epoch, [loss.png](loss.png): each method's own objective (CE plus its weighted "
                 "distillation term), so its level is not comparable between methods."]
    return "\n\n".join(sections) + "\n"


def write_run(run_dir: pathlib.Path, config: dict[str, Any], teacher: Sequence[MemberResult],
              students: Sequence[MemberResult]) -> str:
    """Write every output of a run into `run_dir`; returns the summary's Markdown."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with open(run_dir / "members.jsonl", "w") as f:
        f.writelines(json.dumps(member_row(r, role)) + "\n"
                     for role, group in (("teacher", teacher), ("student", students)) for r in group)
    shown, score = students or teacher, score_for(config)
    plot_curves(shown, run_dir / "accuracy.png", score.at, f"test {score.name}" + (f" ({score.unit})" * bool(score.unit)))
    plot_curves(shown, run_dir / "loss.png", lambda row: row["train_loss"], "train loss")
    if len(group_by_config(students)) > 2:
        plot_ranking(students, run_dir / "ranking.png", score)
    if epoch_differences(students, score):
        plot_differences(students, run_dir / "difference.png", score)
    text = summary(config, teacher, students)
    (run_dir / "summary.md").write_text(text)
    return text


def read_run(run_dir: pathlib.Path) -> tuple[dict[str, Any], list[MemberResult], list[MemberResult]]:
    """A run folder written by `write_run`: (config, teacher results, student results)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "members.jsonl").is_file() or not (run_dir / "config.json").is_file():
        raise RunFolderError(f"{run_dir} holds no config.json and members.jsonl: pass a run folder that a kdjax "
                             "experiment wrote (experiments/runs/<name>-<hash>/)")
    teacher: list[MemberResult] = []
    students: list[MemberResult] = []
    number = 0  # the members.jsonl line being read; 0 while reading config.json
    try:
        config = json.loads((run_dir / "config.json").read_text())
        for number, line in enumerate((run_dir / "members.jsonl").read_text().splitlines(), start=1):
            row = json.loads(line)
            if "role" not in row:
                raise RunFolderError(f"{run_dir}/members.jsonl was written by an earlier kdjax: rerun its command, "
                                     "which restores the trained members and rewrites the folder")
            method = Method(row["method"], "", title=row.get("title", ""))  # the run's record of it, not a lookup
            member = Member(method, row["seed"], tuple(sorted((k, float(v)) for k, v in
                                                                     row["hyperparameters"].items())))
            result = MemberResult(member, row["network"], row["parameters"], row["test_accuracy"], row["test_loss"],
                                  row["train_seconds"], row["images_per_second"], row["history"],
                                  row.get("validation_accuracy"), row.get("view_accuracy"), row.get("program"))
            (teacher if row["role"] == "teacher" else students).append(result)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        where = f"members.jsonl line {number}" if number else "config.json"
        raise RunFolderError(f"{run_dir}: {where} is not what kdjax writes ({type(error).__name__}: {error}); "
                             "rerun the command that made the folder to rewrite it") from error
    return config, teacher, students


def compare_runs(sources: Sequence[tuple[pathlib.Path, Sequence[str] | None]], output: pathlib.Path) -> str:
    """Write one report of the students of several runs into `output`; returns its Markdown.

    Each source is (run folder, the methods to take from it, or None for all). A member that
    two sources hold, or a method a source lacks, is an error: which CE is the baseline
    must be a choice, not an accident of order.
    """
    students: list[MemberResult] = []
    taken: dict[tuple, pathlib.Path] = {}
    described = []
    for run_dir, wanted in sources:
        config, _, results = read_run(run_dir)
        present = list(dict.fromkeys(r.member.name for r in results))
        missing = [name for name in (wanted or []) if name not in present]
        if missing:
            raise RunFolderError(f"{run_dir} has no {', '.join(missing)} students; it has {', '.join(present)}")
        chosen = [r for r in results if wanted is None or r.member.name in wanted]
        for result in chosen:
            key = (result.network, result.member)
            if key in taken:
                raise RunFolderError(f"{result.member.label} is in both {taken[key]} and {run_dir}: take it from one "
                                     "of them (RUN_DIR:method,...)")
            taken[key] = run_dir
        students += chosen
        described.append({"run": str(run_dir), "methods": list(dict.fromkeys(r.member.name for r in chosen)),
                          "config": config})
    return write_run(pathlib.Path(output), {"name": "comparison", "sources": described}, [], students)
