"""A run's plots: per-epoch curves (mean over seeds, the seeds' range as a band), the ranking of configurations
with their intervals, and each configuration's paired difference to CE per epoch. matplotlib is imported when a
plot is drawn (the `experiments` extra)."""

from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from kdjax.engine import MemberResult
from kdjax.stats import summarize
from kdjax.tables import epoch_differences, group_by_config, setting_text
from kdjax.tasks import ACCURACY, Score


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
