"""The numbers of a run's summary: per configuration the mean score with its 95 % t-interval, each configuration
minus CE over the same seeds (paired t-test, Holm's adjustment for the number compared), the epochs at which each is
ahead of or behind CE, the runs a comparison draws on, and warnings about a teacher that taught nothing."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from kdjax.config import layout_settings
from kdjax.engine import MemberResult
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


def sources_table(sources: Sequence[dict[str, Any]]) -> str:
    """The runs a comparison draws on, with the settings in which they differ."""
    settings = [source["config"] for source in sources]
    skip = {"name", "machine", "seconds_this_invocation", *layout_settings()}  # per invocation, not per result
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
