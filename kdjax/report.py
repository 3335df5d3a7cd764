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

import dataclasses
import json
import math
import pathlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from kdjax.config import LAYOUT_SETTINGS
from kdjax.engine import Member, MemberResult
from kdjax.methods import Method
from kdjax.stats import holm_adjusted, paired_comparison, summarize
from kdjax.tasks import ACCURACY, BITS_PER_TOKEN, CLASSIFICATION, TASKS, Score


def best_epoch(score: Score) -> Score:
    """`score` taken at each member's best epoch."""
    return dataclasses.replace(score, name=f"best-epoch {score.name}", best=True)


def score_for(config: dict[str, Any]) -> Score:
    """The score of a run whose config (or first source's config) names its task (classification if none)."""
    sources = config.get("sources") or []
    task = config.get("task") or next((s["config"].get("task") for s in sources), None)
    return TASKS.get(task, CLASSIFICATION).score


def _verdict(comparison, score: Score) -> str:
    """"better", "worse" or "unclear" for the student, whichever way the score points."""
    if not score.lower_is_better:
        return comparison.verdict
    return {"better": "worse", "worse": "better"}.get(comparison.verdict, comparison.verdict)


class RunFolderError(ValueError):
    """A folder that does not hold a run kdjax wrote, or a comparison that cannot be made; the message says which."""


def titles(results: Sequence[MemberResult]) -> dict[str, str]:
    """Method name -> the title reports give its students ("CE + DIST"), from the members' own methods."""
    return {r.member.name: r.member.method.title for r in results}


def setting_text(result: MemberResult) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in result.member.hyperparameters) or "—"


def group_by_config(results: Sequence[MemberResult]) -> dict[tuple, list[MemberResult]]:
    """Results keyed by (network, method, hyperparameters), seeds in the order given."""
    groups: dict[tuple, list[MemberResult]] = defaultdict(list)
    for result in results:
        groups[(result.network, result.member.name, result.member.hyperparameters)].append(result)
    return dict(groups)


def _interval(low: float, high: float, signed: bool = False, digits: int = 2, bounded: bool = True) -> str:
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = f"[{fmt.format(low)}, {fmt.format(high)}]"
    if bounded and not signed and (low < 0 or high > 100):
        text += " (beyond 0-100 %: too few seeds for a useful interval)"
    return text


def summary_table(results: Sequence[MemberResult], score: Score = ACCURACY) -> str:
    """Per configuration: seeds, mean, std and 95 % CI of the final score, and training wall time (and, for
    bits per token, the token accuracy)."""
    validated = all(r.validation_accuracy is not None for r in results)
    tokens = score is BITS_PER_TOKEN
    lines = [f"| network | method | setting | seeds | mean {score.name} | std | 95% CI | "
             + "mean token accuracy | " * tokens + "mean validation accuracy | " * validated + "training (min) |",
             "|---|---|---|---:|---:|---:|---|" + "---:|" * (validated + tokens) + "---:|"]
    title = titles(results)
    for (network, method, _), group in group_by_config(results).items():
        s = summarize([score.of(r) for r in group])
        many = s.n > 1
        interval = _interval(s.ci_low, s.ci_high, digits=score.digits, bounded=score is ACCURACY) if many \
            else "n/a (one seed)"
        token_accuracy = f"{sum(r.test_accuracy for r in group) / len(group):.2f}% | " if tokens else ""
        validation = f"{sum(r.validation_accuracy for r in group) / len(group):.2f}% | " if validated else ""
        minutes = max(r.train_seconds for r in group) / 60  # members of a program share its wall time
        shared = sorted({r.program for r in group if r.program and "+" in r.program})
        minutes_text = f"{minutes:.1f}" + (f" (shared: {', '.join(shared)})" if shared else "")
        lines.append(f"| {network} | {title[method]} | {setting_text(group[0])} | {s.n} | {score.text(s.mean)} | "
                     f"{f'{s.std:.{score.digits}f}' if many else 'n/a'} | {interval} | {token_accuracy}{validation}"
                     f"{minutes_text} |")
    return "\n".join(lines)


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def pairs_with_ce(results: Sequence[MemberResult]) -> dict[tuple, list[tuple[MemberResult, MemberResult]]]:
    """Per distillation configuration, its results paired with CE's on the same network and seed (if any)."""
    baseline = {(r.network, r.member.seed): r for r in results if r.member.name == "ce"}
    out = {}
    for key, group in group_by_config(results).items():
        pairs = [(r, baseline[(r.network, r.member.seed)]) for r in group
                 if r.member.name != "ce" and (r.network, r.member.seed) in baseline]
        if pairs:
            out[key] = pairs
    return out


def paired_table(results: Sequence[MemberResult], score: Score = ACCURACY) -> str | None:
    """Each distillation configuration minus CE on the same network, seed by seed; None without such pairs."""
    compared = [((method, pairs[0][0]), paired_comparison([score.of(a) for a, _ in pairs],
                                                          [score.of(b) for _, b in pairs]))
                for (_, method, _), pairs in pairs_with_ce(results).items()]
    if not compared:
        return None
    adjusted = holm_adjusted([c.p_value for _, c in compared])
    tested = sum(not math.isnan(p) for p in adjusted)
    holm = f"p, Holm over {tested} comparisons" if tested else "p, Holm"
    lines = [(f"| method | setting | paired seeds | {score.name} − CE ({score.difference_unit}) | 95% CI | "
              f"p (paired t) | {holm} | verdict |"), "|---|---|---:|---:|---|---:|---:|---|"]
    for ((method, example), c), holm in zip(compared, adjusted):
        many = c.n > 1
        verdict = {"better": "beats CE", "worse": "worse than CE"}.get(_verdict(c, score), "no clear difference")
        lines.append(f"| {example.member.method.title} | {setting_text(example)} | {c.n} | {c.mean_difference:+.{score.digits}f} | "
                     f"{_interval(c.ci_low, c.ci_high, signed=True, digits=score.digits) if many else 'n/a'} | "
                     f"{_p_text(c.p_value)} | {_p_text(holm)} | {verdict if many else 'n/a (one seed)'} |")
    return "\n".join(lines)


def epoch_differences(results: Sequence[MemberResult], score: Score = ACCURACY) -> dict[tuple, list]:
    """Per distillation configuration, its paired difference to CE at every epoch (`PairedComparison`s)."""
    out = {}
    for key, pairs in pairs_with_ce(results).items():
        epochs = min(min(len(a.history), len(b.history)) for a, b in pairs)
        if len(pairs) > 1 and epochs > 1:
            out[key] = [paired_comparison([score.at(a.history[e]) for a, _ in pairs],
                                          [score.at(b.history[e]) for _, b in pairs]) for e in range(epochs)]
    return out


def _epoch_ranges(epochs: Sequence[int]) -> str:
    """`[1, 2, 3, 7]` -> `1-3, 7`."""
    ranges: list[list[int]] = []
    for epoch in epochs:
        if ranges and epoch == ranges[-1][-1] + 1:
            ranges[-1].append(epoch)
        else:
            ranges.append([epoch])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in ranges)


def epoch_table(results: Sequence[MemberResult], score: Score = ACCURACY) -> str | None:
    """Per configuration: the epochs at which it is ahead of (behind) CE beyond the 95 % interval."""
    differences = epoch_differences(results, score)
    if not differences:
        return None
    below = "below" if score.lower_is_better else "above"
    above = "above" if score.lower_is_better else "below"
    lines = [f"| method | setting | epochs ahead of CE (CI {below} 0) | epochs behind CE (CI {above} 0) | "
             f"last epoch: {score.name} − CE |", "|---|---|---|---|---|"]
    groups = group_by_config(results)
    for key, comparisons in differences.items():
        ahead = [e + 1 for e, c in enumerate(comparisons) if _verdict(c, score) == "better"]
        behind = [e + 1 for e, c in enumerate(comparisons) if _verdict(c, score) == "worse"]
        last = comparisons[-1]
        lines.append(f"| {groups[key][0].member.method.title} | {setting_text(groups[key][0])} | {_epoch_ranges(ahead) or 'none'} | "
                     f"{_epoch_ranges(behind) or 'none'} | {last.mean_difference:+.{score.digits}f} "
                     f"{_interval(last.ci_low, last.ci_high, signed=True, digits=score.digits)} |")
    return "\n".join(lines)


def _epoch_axis(ax, epochs: int) -> None:
    """Whole epochs only: a tick per epoch up to 20, the axis padded by half an epoch (one epoch is one tick)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    if epochs <= 20:
        ax.set_xticks(range(1, epochs + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, epochs + 0.5)


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, clear of the data and of the y label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _save(fig, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_differences(results: Sequence[MemberResult], path: pathlib.Path, score: Score = ACCURACY) -> None:
    """Each configuration's paired difference to CE per epoch: mean line, 95 % CI band, zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_config(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    longest = 1
    for key, comparisons in epoch_differences(results, score).items():
        longest = max(longest, len(comparisons))
        epochs = range(1, len(comparisons) + 1)
        line, = ax.plot(epochs, [c.mean_difference for c in comparisons], label=f"{groups[key][0].member.method.title}"
                        + (f" ({setting_text(groups[key][0])})" if groups[key][0].member.hyperparameters else ""))
        ax.fill_between(epochs, [c.ci_low for c in comparisons], [c.ci_high for c in comparisons], alpha=0.15,
                        color=line.get_color())
    ax.axhline(0, color="black", linewidth=0.8)
    _epoch_axis(ax, longest)
    ax.set_ylabel(f"test {score.name} − CE's, same seed ({score.difference_unit})")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


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


def plot_curves(results: Sequence[MemberResult], path: pathlib.Path, value: Callable[[dict], float],
                ylabel: str) -> None:
    """`value(history row)` per epoch: one line per configuration (mean over seeds), the seeds' range as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    longest = 1
    for (network, method, _), group in group_by_config(results).items():
        epochs = [row["epoch"] for row in group[0].history]
        longest = max([longest, *epochs])
        columns = list(zip(*[[value(row) for row in r.history] for r in group]))
        means = [sum(column) / len(column) for column in columns]
        label = f"{network} {group[0].member.method.title}" + (f" ({setting_text(group[0])})" if group[0].member.hyperparameters
                                               else "") + (f", {len(group)} seeds" if len(group) > 1 else "")
        line, = ax.plot(epochs, means, marker="o", label=label)
        if len(group) > 1 and len(epochs) > 1:
            ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15,
                            color=line.get_color())
        elif len(group) > 1:  # one epoch: the seeds' range as a bar, a band would be a line
            ax.vlines(epochs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(),
                      alpha=0.4, linewidth=4)
    _epoch_axis(ax, longest)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def plot_ranking(results: Sequence[MemberResult], path: pathlib.Path, score: Score = ACCURACY) -> None:
    """Configurations sorted by mean final score with 95 % CI bars; CE's interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_config(results)
    settings_per_method = Counter(method for _, method, _ in groups)
    rows = []
    for (_, method, _), group in groups.items():
        s = summarize([score.of(r) for r in group])
        label = group[0].member.method.title + (f" ({setting_text(group[0])})" if settings_per_method[method] > 1 else "")
        rows.append((s, label, method == "ce"))
    rows.sort(key=lambda row: row[0].mean, reverse=score.lower_is_better)  # the best at the top
    low, high = _ranking_limits([s for s, _, _ in rows], score)
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    clipped = False
    for y, (s, label, is_ce) in enumerate(rows):
        color = "black" if is_ce else "tab:blue"
        ax.plot([s.mean], [y], "o", color=color)
        if s.n > 1:
            left, right = max(s.ci_low, low), min(s.ci_high, high)
            ax.hlines(y, left, right, color=color)
            for end, inside, marker in ((s.ci_low, left, "<"), (s.ci_high, right, ">")):
                cut = end != inside
                clipped |= cut
                ax.plot([inside], [y], marker if cut else "|", color=color, markersize=7 if cut else 9)
        if is_ce and s.n > 1:
            ax.axvspan(max(s.ci_low, low), min(s.ci_high, high), color="gray", alpha=0.2, label="CE's 95% CI")
    ax.set_xlim(low, high)
    ax.set_yticks(range(len(rows)), [label for _, label, _ in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    seeds = max(s.n for s, _, _ in rows)
    unit = f" ({score.unit})" if score.unit else ""
    xlabel = (f"final test {score.name}{unit}, mean and 95% CI over {seeds} seeds" if seeds > 1
              else f"final test {score.name}{unit}, one seed each: no interval")
    ax.set_xlabel(xlabel + ("\n< >: the interval goes on beyond the axis" if clipped else ""))
    ax.grid(axis="x", alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def _ranking_limits(summaries: Sequence[Any], score: Score) -> tuple[float, float]:
    """x limits: the means with a margin of the typical (median) half-interval, not the widest interval, which
    with 3 seeds can span tens of points and squeeze every mean into one spot; wider intervals are clipped."""
    means = [s.mean for s in summaries]
    halves = sorted((s.ci_high - s.ci_low) / 2 for s in summaries if s.n > 1)
    typical = halves[len(halves) // 2] if halves else 0.0
    margin = max(0.6 * (max(means) - min(means)), typical, 10 ** (1 - score.digits))
    low, high = min(means) - margin, max(means) + margin
    if score is ACCURACY:
        low, high = max(low, 0.0), min(high, 100.0)
    return low, high


def sources_table(sources: Sequence[dict[str, Any]]) -> str:
    """The runs a comparison draws on, with the settings in which they differ."""
    settings = [source["config"] for source in sources]
    skip = {"name", "machine", "seconds_this_invocation", *LAYOUT_SETTINGS}  # per invocation, not per result
    differing = sorted(key for key in set().union(*settings) if key not in skip
                       and len({json.dumps(s.get(key), sort_keys=True) for s in settings}) > 1)
    lines = ["| run | experiment | methods taken | settings that differ between the runs |", "|---|---|---|---|"]
    for source in sources:
        config = source["config"]
        differences = ", ".join(f"{key} {json.dumps(config.get(key))}" for key in differing) or "—"
        lines.append(f"| `{source['run']}` | {config.get('name', '?')} | {', '.join(source['methods'])} | "
                     f"{differences} |")
    return "\n".join(lines)


def chance_level(score: Score, classes: int) -> float:
    """The score of guessing uniformly among `classes`: 100 / classes percent, or log2(classes) bits."""
    return math.log2(classes) if score.lower_is_better else 100.0 / classes


def teacher_warnings(teacher: Sequence[MemberResult], students: Sequence[MemberResult], score: Score,
                     classes: int | None) -> list[str]:
    """Warnings about a teacher with nothing to teach: at or below chance, or worse than its CE students."""
    if not teacher:
        return []
    value = sum(score.of(r) for r in teacher) / len(teacher)
    better = (lambda a, b: a < b) if score.lower_is_better else (lambda a, b: a > b)
    unit = " bits per token" * score.lower_is_better
    warnings = []
    chance = chance_level(score, classes) if classes else None
    if chance is not None and (not better(value, chance) or math.isclose(value, chance, rel_tol=1e-9)):
        warnings.append(f"the teacher scores {score.text(value)}{unit} on the test split, at or below chance "
                        f"({score.text(chance)}{unit} for {classes} classes): it has nothing to "
                        "teach; train it longer, or check its weights and normalisation")
    ce = [score.of(r) for r in students if r.member.name == "ce"]
    if ce and better(sum(ce) / len(ce), value):
        warnings.append(f"the teacher ({score.text(value)}{unit}) is worse than its students trained with CE alone "
                        f"({score.text(sum(ce) / len(ce))}{unit}, mean of {len(ce)}): imitating it can only pull "
                        "students down; train the teacher longer or use a stronger one")
    return warnings


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
