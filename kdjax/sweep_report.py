"""A sweep's results as files: per-member JSON lines, a Markdown summary with paired comparisons, a plot."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections import defaultdict
from collections.abc import Sequence

from kdjax.stats import paired_comparison, summarize
from kdjax.sweep import Member, MemberResult

TITLES = {"ce": "CE", "kd": "CE + KD", "cosine": "CE + cosine", "hint": "CE + hint"}


def _setting_text(setting: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in setting.items()) or "—"


def group_by_config(results: Sequence[MemberResult]) -> dict[tuple, list[MemberResult]]:
    """Results keyed by (objective, setting items), seeds in the order given."""
    groups: dict[tuple, list[MemberResult]] = defaultdict(list)
    for result in results:
        groups[(result.member.objective, tuple(result.member.setting.items()))].append(result)
    return dict(groups)


def summary_table(results: Sequence[MemberResult]) -> str:
    """Per configuration: seeds, mean, std and 95 % CI of the final test accuracy."""
    lines = ["| objective | setting | seeds | mean accuracy | std | 95% CI |", "|---|---|---:|---:|---:|---|"]
    for (objective, setting), group in group_by_config(results).items():
        s = summarize([r.test_accuracy for r in group])
        interval = f"[{s.ci_low:.2f}, {s.ci_high:.2f}]" if s.n > 1 else "n/a (one seed)"
        std = f"{s.std:.2f}" if s.n > 1 else "n/a"
        lines.append(f"| {TITLES[objective]} | {_setting_text(dict(setting))} | {s.n} | {s.mean:.2f}% | {std} | "
                     f"{interval} |")
    return "\n".join(lines)


def paired_table(results: Sequence[MemberResult]) -> str | None:
    """Each non-CE configuration minus the CE baseline, seed by seed; None without such pairs."""
    baseline = {r.member.seed: r.test_accuracy for r in results if r.member.objective == "ce"}
    if not baseline:
        return None
    lines = ["| objective | setting | paired seeds | accuracy − CE (points) | 95% CI | p (paired t) | verdict |",
             "|---|---|---:|---:|---|---:|---|"]
    for (objective, setting), group in group_by_config(results).items():
        if objective == "ce":
            continue
        pairs = [(r.test_accuracy, baseline[r.member.seed]) for r in group if r.member.seed in baseline]
        if not pairs:
            continue
        c = paired_comparison([a for a, _ in pairs], [b for _, b in pairs])
        interval = f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]" if c.n > 1 else "n/a"
        p_value = f"{c.p_value:.3f}" if c.p_value == c.p_value else "n/a"
        verdict = {"better": "beats CE", "worse": "worse than CE"}.get(c.verdict, "no clear difference")
        lines.append(f"| {TITLES[objective]} | {_setting_text(dict(setting))} | {c.n} | {c.mean_difference:+.2f} | "
                     f"{interval} | {p_value} | {verdict if c.n > 1 else 'n/a'} |")
    return "\n".join(lines) if len(lines) > 2 else None


def write_members(path: pathlib.Path, results: Sequence[MemberResult]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps({"member": dataclasses.asdict(r.member), "test_accuracy": r.test_accuracy,
                                "test_loss": r.test_loss, "history": r.history}) + "\n" for r in results)


def plot_temperature_sweep(results: Sequence[MemberResult], path: pathlib.Path) -> bool:
    """KD accuracy vs temperature, one line per aux weight, 95 % CI error bars; False if there is no such sweep."""
    kd = [r for r in results if r.member.objective == "kd"]
    if len({r.member.temperature for r in kd}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for aux_weight in sorted({r.member.aux_weight for r in kd}):
        points = []
        for temperature in sorted({r.member.temperature for r in kd}):
            values = [r.test_accuracy for r in kd if r.member.temperature == temperature
                      and r.member.aux_weight == aux_weight]
            if values:
                s = summarize(values)
                points.append((temperature, s.mean, s.half_width if s.n > 1 else 0.0))
        xs, means, errors = zip(*points)
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=f"aux weight {aux_weight:g}")
    baseline = [r.test_accuracy for r in results if r.member.objective == "ce"]
    if baseline:
        s = summarize(baseline)
        ax.axhline(s.mean, color="gray", linestyle="--", label=f"CE only (n={s.n})")
        if s.n > 1:
            ax.axhspan(s.ci_low, s.ci_high, color="gray", alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KD temperature T")
    ax.set_ylabel("test accuracy (%), mean ± 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report_sections(results: Sequence[MemberResult], out_dir: pathlib.Path) -> list[str]:
    """The summary's Markdown sections; writes `temperature.png` into `out_dir` when there is a KD temperature sweep."""
    sections = ["## Test accuracy per configuration", summary_table(results)]
    paired = paired_table(results)
    if paired:
        sections += ["## Against CE over the same seeds", paired]
    if plot_temperature_sweep(results, out_dir / "temperature.png"):
        sections += ["![KD accuracy vs temperature](temperature.png)"]
    return sections


def read_members(path: pathlib.Path) -> list[MemberResult]:
    """The results a sweep wrote to `members.jsonl`."""
    results = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        results.append(MemberResult(Member(**row["member"]), row["test_accuracy"], row["test_loss"], row["history"]))
    return results


def merge(runs: Sequence[Sequence[MemberResult]]) -> list[MemberResult]:
    """The members of several sweeps, each distinct member once.

    A member trains the same whatever sweep holds it, so one that appears in two sweeps
    must have the same result; a mismatch means the sweeps differ in data, epochs or code.
    """
    seen: dict[Member, MemberResult] = {}
    for results in runs:
        for result in results:
            earlier = seen.setdefault(result.member, result)
            if abs(earlier.test_accuracy - result.test_accuracy) > 1e-6:
                raise ValueError(f"{result.member} has test accuracy {earlier.test_accuracy} in one sweep and "
                                 f"{result.test_accuracy} in another: were they run on the same data and settings?")
    return list(seen.values())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kdjax.sweep_report RUN_DIR... --out DIR`: one summary of several sweeps' members."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kdjax.sweep_report", description=main.__doc__)
    parser.add_argument("runs", nargs="+", type=pathlib.Path, help="sweep output folders (holding members.jsonl)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for summary.md and temperature.png")
    args = parser.parse_args(argv)
    try:
        missing = [str(run) for run in args.runs if not (run / "members.jsonl").is_file()]
        if missing:
            raise ValueError(f"no members.jsonl in {', '.join(missing)}: pass the folders a sweep wrote")
        results = merge([read_members(run / "members.jsonl") for run in args.runs])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    sections = report_sections(results, args.out) + [f"Merged from: {', '.join(str(run) for run in args.runs)}."]
    (args.out / "summary.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
