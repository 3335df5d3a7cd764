"""A run's outputs: config, per-member metrics, the Markdown summary with statistics, and plots.

`write_run(run_dir, config, teacher, students)` writes `config.json`, `members.jsonl` (one
line per member: its settings, final figures and per-epoch history), `summary.md` (per
configuration: mean, std and 95 % t-interval of the test accuracy; each configuration
minus CE over the same seeds, with the paired t-test) and `accuracy.png` / `loss.png`
(per epoch, mean over seeds with the range as a band, one line per configuration).
"""

from __future__ import annotations

import json
import pathlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from kdjax.loop import MemberResult
from kdjax.stats import paired_comparison, summarize

TITLES = {"ce": "CE", "kd": "CE + KD", "cosine": "CE + cosine", "hint": "CE + hint"}


def title(method: str) -> str:
    return TITLES.get(method, f"CE + {method}")


def setting_text(result: MemberResult) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in result.member.hyperparameters) or "—"


def group_by_config(results: Sequence[MemberResult]) -> dict[tuple, list[MemberResult]]:
    """Results keyed by (network, method, hyperparameters), seeds in the order given."""
    groups: dict[tuple, list[MemberResult]] = defaultdict(list)
    for result in results:
        groups[(result.network, result.member.method, result.member.hyperparameters)].append(result)
    return dict(groups)


def _interval(low: float, high: float, signed: bool = False) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    text = f"[{fmt.format(low)}, {fmt.format(high)}]"
    if not signed and (low < 0 or high > 100):
        text += " (beyond 0-100 %: too few seeds for a useful interval)"
    return text


def summary_table(results: Sequence[MemberResult]) -> str:
    """Per configuration: seeds, mean, std and 95 % CI of the final test accuracy."""
    lines = ["| network | method | setting | seeds | mean accuracy | std | 95% CI |",
             "|---|---|---|---:|---:|---:|---|"]
    for (network, method, _), group in group_by_config(results).items():
        s = summarize([r.test_accuracy for r in group])
        many = s.n > 1
        interval = _interval(s.ci_low, s.ci_high) if many else "n/a (one seed)"
        lines.append(f"| {network} | {title(method)} | {setting_text(group[0])} | {s.n} | {s.mean:.2f}% | "
                     f"{f'{s.std:.2f}' if many else 'n/a'} | {interval} |")
    return "\n".join(lines)


def paired_table(results: Sequence[MemberResult]) -> str | None:
    """Each distillation configuration minus CE on the same network, seed by seed; None without such pairs."""
    baseline = {(r.network, r.member.seed): r.test_accuracy for r in results if r.member.method == "ce"}
    lines = ["| method | setting | paired seeds | accuracy − CE (points) | 95% CI | p (paired t) | verdict |",
             "|---|---|---:|---:|---|---:|---|"]
    for (network, method, _), group in group_by_config(results).items():
        pairs = [(r.test_accuracy, baseline[(network, r.member.seed)]) for r in group
                 if method != "ce" and (network, r.member.seed) in baseline]
        if not pairs:
            continue
        c = paired_comparison([a for a, _ in pairs], [b for _, b in pairs])
        many = c.n > 1
        verdict = {"better": "beats CE", "worse": "worse than CE"}.get(c.verdict, "no clear difference")
        lines.append(f"| {title(method)} | {setting_text(group[0])} | {c.n} | {c.mean_difference:+.2f} | "
                     f"{_interval(c.ci_low, c.ci_high, signed=True) if many else 'n/a'} | "
                     f"{f'{c.p_value:.3f}' if many and c.p_value == c.p_value else 'n/a'} | "
                     f"{verdict if many else 'n/a (one seed)'} |")
    return "\n".join(lines) if len(lines) > 2 else None


def member_row(result: MemberResult) -> dict[str, Any]:
    return {"label": result.member.label, "network": result.network, "method": result.member.method,
            "seed": result.member.seed, "hyperparameters": dict(result.member.hyperparameters),
            "parameters": result.parameters, "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
            "train_seconds": result.train_seconds, "images_per_second": result.images_per_second,
            "history": result.history}


def plot_curves(results: Sequence[MemberResult], path: pathlib.Path, metric: str, ylabel: str) -> None:
    """`metric` per epoch: one line per configuration (mean over seeds), the seeds' range as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for (network, method, _), group in group_by_config(results).items():
        epochs = [row["epoch"] for row in group[0].history]
        columns = list(zip(*[[row[metric] for row in r.history] for r in group]))
        means = [sum(column) / len(column) for column in columns]
        label = f"{network} {title(method)}" + (f" ({setting_text(group[0])})" if group[0].member.hyperparameters
                                               else "") + (f", {len(group)} seeds" if len(group) > 1 else "")
        line, = ax.plot(epochs, means, marker="o", label=label)
        if len(group) > 1:
            ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15,
                            color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(config: dict[str, Any], teacher: Sequence[MemberResult], students: Sequence[MemberResult]) -> str:
    """The Markdown summary of a run."""
    sections = [f"# {config['name']}"]
    if teacher and students:
        accuracies = ", ".join(f"{r.test_accuracy:.2f}% (seed {r.member.seed})" for r in teacher)
        sections.append(f"Teacher: {teacher[0].network}, {accuracies} after {len(teacher[0].history)} epochs.")
    sections += ["## Test accuracy per configuration", summary_table(students or teacher)]
    paired = paired_table(students)
    if paired:
        sections += ["## Against CE over the same seeds", paired]
    sections += ["![test accuracy per epoch](accuracy.png)"]
    return "\n\n".join(sections) + "\n"


def write_run(run_dir: pathlib.Path, config: dict[str, Any], teacher: Sequence[MemberResult],
              students: Sequence[MemberResult]) -> str:
    """Write every output of a run into `run_dir`; returns the summary's Markdown."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    everything = [*teacher, *students]
    with open(run_dir / "members.jsonl", "w") as f:
        f.writelines(json.dumps(member_row(r)) + "\n" for r in everything)
    shown = students or teacher
    plot_curves(shown, run_dir / "accuracy.png", "test_accuracy", "test accuracy (%)")
    plot_curves(shown, run_dir / "loss.png", "train_loss", "train loss")
    text = summary(config, teacher, students)
    (run_dir / "summary.md").write_text(text)
    return text
