"""The run report: per-configuration statistics, the paired comparison with CE, and the ranking plot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from kdjax import methods
from kdjax.engine import Member, MemberResult
from kdjax.experiments import compare
from kdjax.report import RunFolderError, compare_runs, read_run, write_run
from kdjax.tables import paired_table, titles

ACCURACIES = {"ce": [60.0, 61.0, 59.5], "kd": [61.0, 62.5, 60.0], "at": [55.0, 54.0, 57.0]}


def _result(method: str, seed: int, accuracy: float, validation: float | None = None) -> MemberResult:
    history = [{"epoch": 1, "train_loss": 1.0, "test_accuracy": accuracy, "test_loss": 1.0, "seconds": 60.0,
                "images_per_second": 100.0}]
    return MemberResult(Member(method, seed), "LightNN", 1, accuracy, 1.0, 120.0, 100.0, history, validation)


def test_summary_states_means_intervals_and_paired_differences(tmp_path):
    students = [_result(m, seed, a, validation=a - 1) for m, values in ACCURACIES.items()
                for seed, a in enumerate(values)]
    text = write_run(tmp_path, {"name": "methods"}, [], students)
    for method, values in ACCURACIES.items():
        mean, sem = np.mean(values), stats.sem(values)
        half = stats.t.ppf(0.975, len(values) - 1) * sem
        assert f"| {mean:.2f}% | {np.std(values, ddof=1):.2f} | [{mean - half:.2f}, {mean + half:.2f}] | " \
               f"{mean - 1:.2f}% | 2.0 |" in text, method
    differences = np.subtract(ACCURACIES["kd"], ACCURACIES["ce"])
    p = stats.ttest_rel(ACCURACIES["kd"], ACCURACIES["ce"]).pvalue
    assert f"| CE + KD | — | 3 | {differences.mean():+.2f} |" in text and f"| {p:.3f} |" in text
    p_at = stats.ttest_rel(ACCURACIES["at"], ACCURACIES["ce"]).pvalue
    holm_kd = min(1, max(2 * min(p, p_at), p if p > p_at else 0))  # Holm over the two comparisons
    assert f"| {p:.3f} | {holm_kd:.3f} |" in text and "p, Holm over 2 comparisons" in text
    assert (tmp_path / "ranking.png").stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "members.jsonl").read_text().splitlines()]
    assert rows[0]["validation_accuracy"] == 59.0


def test_one_seed_has_no_p_values_and_says_so():
    text = paired_table([_result("ce", 42, 60.0), _result("kd", 42, 61.0)])
    assert "| p, Holm | verdict |" in text and "| +1.00 | n/a | n/a | n/a | n/a (one seed) |" in text


def test_two_configurations_get_no_ranking_plot(tmp_path):
    write_run(tmp_path, {"name": "kd"}, [], [_result(m, 0, 50.0) for m in ("ce", "kd")])
    assert not (tmp_path / "ranking.png").exists()


def _curve(method: str, seed: int, accuracies: list[float]) -> MemberResult:
    history = [{"epoch": e + 1, "train_loss": 1.0, "test_accuracy": a, "test_loss": 1.0, "seconds": 1.0,
                "images_per_second": 1.0} for e, a in enumerate(accuracies)]
    return MemberResult(Member(method, seed), "LightNN", 1, accuracies[-1], 1.0, 4.0, 1.0, history)


def test_epochs_ahead_of_ce_are_those_whose_paired_interval_excludes_zero(tmp_path):
    ce = [[50, 60, 62, 63], [51, 59, 61, 64], [49, 61, 63, 62]]
    kd = [[50.5, 59.5, 64, 66], [50.5, 60, 63.5, 66.5], [49.5, 61, 65, 65]]  # ahead at epochs 3 and 4 only
    students = [_curve("ce", s, a) for s, a in enumerate(ce)] + [_curve("kd", s, a) for s, a in enumerate(kd)]
    text = write_run(tmp_path, {"name": "patient"}, [], students)
    diff = np.subtract(kd, ce)[:, 3]
    half = stats.t.ppf(0.975, 2) * stats.sem(diff)
    assert (f"| CE + KD | — | 3-4 | none | {diff.mean():+.2f} [{diff.mean() - half:+.2f}, {diff.mean() + half:+.2f}] |"
            in text)
    assert (tmp_path / "difference.png").stat().st_size > 0


def _write(folder, name, results, teacher=(), **settings):
    write_run(folder, {"name": name, "epochs": 10, **settings}, list(teacher), results)
    return folder


def test_a_run_folder_reads_back_as_written(tmp_path):
    teacher = [_curve("ce", 42, [70.0, 72.5])]
    students = [_curve("kd", s, [50.0 + s, 55.25]) for s in range(2)] + [_result("at", 3, 40.0, validation=39.5)]
    config, read_teacher, read_students = read_run(_write(tmp_path / "run", "methods", students, teacher))
    assert config["name"] == "methods" and read_teacher == teacher and read_students == students


def test_comparison_pairs_students_of_separate_runs_by_seed(tmp_path):
    ce = {0: 60.0, 1: 61.0, 2: 59.5}
    kd = {0: 61.0, 1: 62.5, 2: 60.0}
    baseline = _write(tmp_path / "baseline", "baseline", [_result("ce", s, a) for s, a in ce.items()], train_size=5000,
                      machine="host-a")
    # The distillation run holds its own CE too; the comparison takes only its KD students.
    distilled = _write(tmp_path / "kd", "kd", [_result(m, s, a + 5 * (m == "ce")) for m, values in
                                               (("ce", ce), ("kd", kd)) for s, a in values.items()],
                       labelled_size=5000, machine="host-b")
    text = compare_runs([(baseline, None), (distilled, ["kd"])], tmp_path / "out")
    differences = np.subtract(list(kd.values()), list(ce.values()))
    p = stats.ttest_rel(list(kd.values()), list(ce.values())).pvalue
    assert f"| CE + KD | — | 3 | {differences.mean():+.2f} |" in text and f"| {p:.3f} |" in text
    assert 'labelled_size 5000, train_size null |' in text and 'labelled_size null, train_size 5000 |' in text
    assert "epochs" not in text.split("## Test accuracy")[0]  # equal in both runs, so not listed
    assert "machine" not in text.split("## Test accuracy")[0]  # where a run ran is not a setting
    assert read_run(tmp_path / "out")[2] == [_result("ce", s, a) for s, a in ce.items()] + \
        [_result("kd", s, a) for s, a in kd.items()]


def test_comparison_refuses_ambiguous_or_missing_members(tmp_path):
    one = _write(tmp_path / "one", "baseline", [_result("ce", 0, 60.0)])
    two = _write(tmp_path / "two", "kd", [_result("ce", 0, 61.0), _result("kd", 0, 62.0)])
    with pytest.raises(RunFolderError, match=r"ce\[seed=0\] is in both .*one and .*two: take it from one"):
        compare_runs([(one, None), (two, None)], tmp_path / "out")
    with pytest.raises(RunFolderError, match=r"has no dkd students; it has ce, kd"):
        compare_runs([(two, ["dkd"])], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (two / "members.jsonl").write_text((two / "members.jsonl").read_text() + '{"role": "student"}\n')
    with pytest.raises(RunFolderError, match=r"two: members.jsonl line 3 is not what kdjax writes \(KeyError"):
        read_run(two)


def test_compare_command_reports_a_non_run_folder_in_one_line(tmp_path, capsys):
    assert compare.main([str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path} holds no config.json and members.jsonl" in error
    folder = _write(tmp_path / "run", "kd", [_result("ce", 0, 60.0), _result("kd", 0, 62.0)])
    assert compare.main([f"{folder}:kd", f"{folder}:ce", "--output-dir", str(tmp_path / "out")]) == 0
    assert "| CE + KD | — | 1 | +2.00 |" in capsys.readouterr().out


def test_reports_title_methods_as_their_papers_do(tmp_path):
    """Registered methods' titles; a method this process has not registered (read back) keeps its name."""
    assert [methods.get(name).title for name in ("ce", "kd", "lskd", "dist", "hint")] == [
        "CE", "CE + KD", "CE + LS-KD", "CE + DIST", "CE + hint"]
    assert all(m.title == "CE" or m.title.startswith("CE + ") for m in methods.METHODS.values())
    user = methods.Method("logit_mse", "a user's")
    assert user.title == "CE + logit_mse"
    text = write_run(tmp_path, {"name": "methods"}, [], [_result("ce", 0, 60.0),
                                                          dataclasses.replace(_result("ce", 0, 61.0), member=Member(user, 0))])
    assert "| LightNN | CE + logit_mse |" in text
    (tmp_path / "members.jsonl").write_text((tmp_path / "members.jsonl").read_text().replace(
        '"title": "CE + logit_mse", ', ""))  # as an earlier kdjax wrote it
    assert titles(read_run(tmp_path)[2]) == {"ce": "CE", "logit_mse": "CE + logit_mse"}


def test_a_useless_teacher_is_warned_about_in_the_summary(tmp_path):
    """At or below chance (100 / classes %), or worse than the CE students' mean: one warning line each."""
    from kdjax.tables import teacher_warnings
    from kdjax.tasks import ACCURACY, BITS_PER_TOKEN

    students = [_result("ce", seed, a) for seed, a in enumerate(ACCURACIES["ce"])]
    weak = [_result("ce", 42, 58.0)]
    (below_ce,) = teacher_warnings(weak, students, ACCURACY, 10)
    assert "worse than its students trained with CE alone (60.17%, mean of 3)" in below_ce
    assert teacher_warnings([_result("ce", 42, 75.0)], students, ACCURACY, 10) == []
    at_chance = teacher_warnings([_result("ce", 42, 10.0)], [], ACCURACY, 10)
    assert len(at_chance) == 1 and "at or below chance (10.00% for 10 classes)" in at_chance[0]
    uniform = MemberResult(Member("ce", 0), "lm", 1, 5.0, np.log(64.0), 1.0, 1.0, [])  # log(64) nats = 6 bits
    assert "at or below chance (6.000 bits per token for 64 classes)" in teacher_warnings(
        [uniform], [], BITS_PER_TOKEN, 64)[0]
    text = write_run(tmp_path, {"name": "methods", "num_classes": 10, "dataset": "cifar10", "train_examples": 3,
                                "test_examples": 1}, weak, students)
    assert "**Warning:** the teacher (58.00%) is worse than its students" in text
    assert "Data: cifar10, 10 classes, 3 training and 1 test examples." in text


def test_methods_sharing_a_program_say_their_time_is_shared(tmp_path):
    students = [dataclasses.replace(_result(m, seed, a), program="kd+at" if m != "ce" else "ce")
                for m, values in ACCURACIES.items() for seed, a in enumerate(values)]
    text = write_run(tmp_path, {"name": "methods"}, [], students)
    assert "| 2.0 (shared: kd+at) |" in text and "| 2.0 |" in text and "shared between them" in text
    assert read_run(tmp_path)[2][3].program == "kd+at"


def test_plots_tick_whole_epochs_and_the_ranking_axis_fits_the_means():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdjax.plots import _epoch_axis, _ranking_limits
    from kdjax.stats import summarize
    from kdjax.tasks import ACCURACY

    fig, ax = plt.subplots()
    ax.plot([1], [50.0], "o")
    _epoch_axis(ax, 1)
    assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5)
    plt.close(fig)
    narrow = [summarize([44.0, 45.0, 46.0]), summarize([35.0, 36.0, 34.0]), summarize([20.0, 45.0, 36.0])]
    low, high = _ranking_limits(narrow, ACCURACY)
    assert low <= narrow[1].ci_low and high >= narrow[0].ci_high  # the typical intervals are whole
    assert low > narrow[2].ci_low and 0 < low < 35 < 45 < high < 60  # the widest is clipped, not the axis stretched


def test_best_epoch_tables_take_each_members_best_epoch(tmp_path):
    """RepDistiller reports the last epoch, mdistiller the best: the summary gives both."""
    def member(method: str, seed: int, curve: list[float]) -> MemberResult:
        history = [{"epoch": e + 1, "train_loss": 1.0, "test_accuracy": a, "test_loss": 1.0, "seconds": 1.0,
                    "images_per_second": 1.0} for e, a in enumerate(curve)]
        return MemberResult(Member(method, seed), "LightNN", 1, curve[-1], 1.0, 2.0, 1.0, history)

    curves = {"ce": [[50.0, 58.0, 57.0], [51.0, 56.0, 56.5]], "kd": [[52.0, 61.0, 59.0], [50.0, 60.0, 58.5]]}
    students = [member(m, seed, c) for m, cs in curves.items() for seed, c in enumerate(cs)]
    text = write_run(tmp_path, {"name": "methods"}, [], students)
    last, best = text.split("## At each member's best epoch")
    assert "| 56.75% |" in last and "| 58.75% |" in last  # last epochs: CE (57 + 56.5) / 2, KD (59 + 58.5) / 2
    assert "| 57.25% |" in best and "| 60.50% |" in best  # best epochs: CE (58 + 56.5) / 2, KD (61 + 60) / 2
    assert "| CE + KD | — | 2 | +3.25 |" in best.split("## Against CE, epoch by epoch")[0]
