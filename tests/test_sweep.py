"""Sweeps: a vmapped member trains exactly like the same run alone, members stay independent, the grid
compiles once, memory planning, the statistics against closed forms, and the command end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.checkpoint import RunCheckpoints
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, Split
from kdjax.experiments import sweep as sweep_cli
from kdjax.loop import train
from kdjax.models import DeepNN, LightNN
from kdjax.stats import paired_comparison, summarize
from kdjax.sweep import (
    Member,
    SweepMemoryError,
    SweepSettings,
    expand_members,
    init_stacked_state,
    make_sweep_step,
    plan_memory,
    stack_weights,
    train_members,
)
from kdjax.sweep_report import paired_table, plot_temperature_sweep, summary_table
from kdjax.teacher_cache import compute_teacher_cache
from kdjax.train import create_train_state

EXPERIMENT_FOR = {"ce": "baseline", "kd": "kd", "cosine": "cosine", "hint": "hint"}


def _tiny_data(n_train: int = 80, n_test: int = 40) -> Cifar10:
    rng = np.random.default_rng(1)

    def split(n):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))

    return Cifar10(split(n_train), split(n_test), "synthetic", 0.0)


@pytest.fixture(scope="module")
def setup():
    data = _tiny_data()
    teacher_params = create_train_state(DeepNN(), jax.random.key(7)).params
    cache = compute_teacher_cache(teacher_params, data.train, ["logits", "hidden", "feature_map"])
    return data, teacher_params, cache


SETTINGS = SweepSettings(epochs=2, batch_size=32, save_every_steps=0)  # 80 examples: 3 batches, the last padded


def _sweep(tmp_path, name, members, setup, cached=True):
    data, teacher_params, cache = setup
    objective = members[0].objective
    teacher = None if objective == "ce" else (cache if cached else teacher_params)
    checkpoints = RunCheckpoints(tmp_path / name, {"sweep": name})
    run = train_members(members, data, LightNN(hint=objective == "hint"), SETTINGS, checkpoints, teacher=teacher,
                        cached=cached, log=lambda _: None)
    checkpoints.close()
    return run


def _member_params(states, index):
    return jax.tree.map(lambda leaf: leaf[index], states.params)


def _assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.mark.parametrize("objective", ["ce", "kd", "cosine", "hint"])
def test_a_member_trains_like_the_same_run_alone(tmp_path, setup, objective):
    data, teacher_params, cache = setup
    alone = Member(objective, seed=3, ce_weight=0.6, aux_weight=0.4, temperature=4.0)
    run = _sweep(tmp_path, "sweep", [Member(objective, 0, 0.9, 0.1, 1.0), alone], setup)
    config = ExperimentConfig(name=EXPERIMENT_FOR[objective], epochs=SETTINGS.epochs, batch_size=SETTINGS.batch_size,
                              seed=3, ce_weight=0.6, aux_weight=0.4, temperature=4.0, save_every_steps=0,
                              checkpoint_dir=str(tmp_path / "solo"), output_dir=str(tmp_path / "runs"))
    checkpoints = RunCheckpoints(config.checkpoint_dir, {"solo": objective})
    solo = train(config, data, LightNN(hint=objective == "hint"), checkpoints, teacher_params=teacher_params,
                 teacher_cache=None if objective == "ce" else cache, log=lambda _: None)
    checkpoints.close()
    _assert_trees_close(_member_params(run.states, 1), solo.state.params, atol=2e-6)
    assert run.results[1].test_accuracy == pytest.approx(solo.test_accuracy)
    assert [row["train_loss"] for row in run.results[1].history] == pytest.approx(
        [row["train_loss"] for row in solo.history], rel=1e-5)
    # Different seeds and weights really do train differently.
    assert not np.allclose(np.asarray(run.states.params["classifier_3"]["kernel"][0]),
                           np.asarray(run.states.params["classifier_3"]["kernel"][1]))


def test_members_never_see_each_other(tmp_path, setup):
    shared = Member("kd", seed=1, temperature=2.0)
    with_b = _sweep(tmp_path, "b", [shared, Member("kd", seed=2, aux_weight=0.9, temperature=8.0)], setup)
    with_c = _sweep(tmp_path, "c", [Member("kd", seed=5, temperature=1.0), Member("kd", seed=4), shared], setup)
    _assert_trees_close(_member_params(with_b.states, 0), _member_params(with_c.states, 2), atol=1e-6)


def test_teacher_inside_the_step_matches_the_cache(tmp_path, setup):
    members = [Member("cosine", 0), Member("cosine", 1, aux_weight=0.5)]
    cached, live = _sweep(tmp_path, "cached", members, setup), _sweep(tmp_path, "live", members, setup, cached=False)
    _assert_trees_close(cached.states.params, live.states.params, atol=2e-6)


def test_stacked_init_matches_single_runs():
    stacked = init_stacked_state(LightNN(), [0, 9], learning_rate=1e-3)
    from kdjax.loop import init_keys

    single = create_train_state(LightNN(), init_keys(9)[0])
    _assert_trees_close(_member_params(stacked, 1), single.params, atol=0)


def test_a_new_grid_point_does_not_recompile(setup):
    data, _, cache = setup
    members = [Member("kd", 0), Member("kd", 1)]
    states = init_stacked_state(LightNN(), [0, 1], learning_rate=1e-3)
    step = make_sweep_step("kd", 32, len(data.train), True)
    orders = jnp.zeros((2, 96), jnp.int32)
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    images, labels = jnp.asarray(data.train.images), jnp.asarray(data.train.labels)
    before = step._cache_size()
    for temperature in (1.0, 4.0, 8.0):
        weights = stack_weights([dataclasses.replace(m, temperature=temperature) for m in members])
        step(states, orders, np.int32(0), images, labels, cache, keys, weights)
    assert step._cache_size() == before + 1


def test_expand_members_applies_each_axis_only_where_it_matters():
    members = expand_members(["ce", "kd", "cosine"], [0, 1], {"temperature": [1, 4], "aux_weight": [0.25, 0.5]},
                             ce_weight=0.75, aux_weight=0.25, temperature=2.0)
    counts = {o: sum(m.objective == o for m in members) for o in ("ce", "kd", "cosine")}
    assert counts == {"ce": 2, "kd": 8, "cosine": 4}
    assert {m.temperature for m in members if m.objective == "cosine"} == {2.0}
    assert {(m.temperature, m.aux_weight) for m in members if m.objective == "kd"} == {
        (1, 0.25), (1, 0.5), (4, 0.25), (4, 0.5)}
    with pytest.raises(ValueError, match="cannot sweep.*learning_rate"):
        expand_members(["kd"], [0], {"learning_rate": [1e-3]})


def test_memory_plan_counts_members_and_refuses_what_cannot_fit():
    plan = plan_memory(per_member_bytes=100, shared_bytes=200, capacity_bytes=1000)
    assert plan.fits == (800 - 200) // 100
    assert "up to 6 members" in plan.describe()
    with pytest.raises(SweepMemoryError, match="one sweep member needs about .* MiB .*--batch-size"):
        plan_memory(per_member_bytes=2**30, shared_bytes=2**20, capacity_bytes=2**30)


def test_summary_matches_the_t_interval():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    t_975_4 = 2.7764451051977987  # Student's t, 97.5th percentile, 4 degrees of freedom
    assert (s.n, s.mean, s.std) == (5, 3.0, pytest.approx(math.sqrt(2.5)))
    assert s.ci_low == pytest.approx(3 - t_975_4 * math.sqrt(2.5 / 5))
    assert s.ci_high == pytest.approx(3 + t_975_4 * math.sqrt(2.5 / 5))
    single = summarize([70.0])
    assert single.mean == 70.0 and math.isnan(single.std) and math.isnan(single.ci_low)
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])


def test_paired_comparison_matches_the_closed_form():
    # Differences 1, 0.5, 1: mean 5/6, sd 1/sqrt(12), t = 5 on 2 degrees of freedom, whose
    # CDF is 1/2 + t / (2 sqrt(2 + t^2)).
    c = paired_comparison([71.0, 70.5, 72.0], [70.0, 70.0, 71.0])
    sd = 1 / math.sqrt(12)
    assert c.mean_difference == pytest.approx(5 / 6)
    assert c.p_value == pytest.approx(2 * (0.5 - 5 / (2 * math.sqrt(27))))
    t_975_2 = 4.302652729911275
    assert c.ci_low == pytest.approx(5 / 6 - t_975_2 * sd / math.sqrt(3))
    assert c.verdict == "better"
    assert paired_comparison([70.0, 71.0], [71.0, 70.0]).verdict == "no clear difference"
    with pytest.raises(ValueError, match="equally many"):
        paired_comparison([1.0, 2.0], [1.0])


def test_report_tables_and_plot(tmp_path):
    from kdjax.sweep import MemberResult

    results = [MemberResult(Member("ce", s), acc, 1.0, []) for s, acc in enumerate([70.0, 71.0, 70.5])]
    for temperature, shift in ((1.0, 0.2), (4.0, 2.0)):
        results += [MemberResult(Member("kd", s, temperature=temperature), acc + shift + 0.1 * s, 1.0, [])
                    for s, acc in enumerate([70.0, 71.0, 70.5])]
    table = summary_table(results)
    assert "| CE | — | 3 | 70.50% | 0.50 |" in table
    paired = paired_table(results)
    assert "temperature 4" in paired and "beats CE" in paired
    assert plot_temperature_sweep(results, tmp_path / "t.png") and (tmp_path / "t.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "learning_rate=1,2"], "NAME one of temperature"),
    (["--sweep", "temperature=0,2"], "must be > 0"),
    (["--seeds", "0,0"], "lists a value twice"),
    (["--objectives", "kd,teacher"], "unknown \\['teacher'\\]"),
    (["--members-per-program", "-1"], "must be >= 0"),
])
def test_bad_sweep_flags_get_a_clear_error(tmp_path, capsys, argv, message):
    code = sweep_cli.main(argv + ["--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "o")])
    assert code == 1
    assert re.search(message, capsys.readouterr().err)


def _cli_args(tmp_path, *extra):
    return ["--objectives", "baseline", "--seeds", "0,1,2", "--epochs", "1", "--batch-size", "32",
            "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs"), *extra]


def test_sweep_command_chunks_by_memory_and_gets_the_same_results(tmp_path, monkeypatch):
    data = _tiny_data()
    monkeypatch.setattr(sweep_cli, "load_data", lambda config: data)
    assert sweep_cli.main(_cli_args(tmp_path / "whole")) == 0
    # Capacity for exactly one member per program: the sweep splits itself into three.
    per_member, shared = sweep_cli.measure_memory("ce", LightNN(), data.train, SweepSettings(batch_size=32), None,
                                                  False)
    monkeypatch.setattr(sweep_cli, "device_capacity_bytes", lambda: int((shared + 1.5 * per_member) / 0.8))
    assert sweep_cli.main(_cli_args(tmp_path / "chunked")) == 0
    rows = {}
    for name in ("whole", "chunked"):
        (members_file,) = (tmp_path / name / "runs").glob("sweep-*/members.jsonl")
        rows[name] = [json.loads(line) for line in members_file.read_text().splitlines()]
    assert len(list((tmp_path / "chunked" / "ck" / "sweeps").iterdir())) == 3
    for whole, chunked in zip(rows["whole"], rows["chunked"], strict=True):
        assert whole["member"] == chunked["member"]
        for a, b in zip(whole["history"], chunked["history"], strict=True):
            assert a == pytest.approx(b, rel=1e-5)
    summary = next((tmp_path / "whole" / "runs").glob("sweep-*/summary.md")).read_text()
    assert "| CE | — | 3 |" in summary and "Command: `python -m kdjax.experiments.sweep" in summary


def test_sweep_command_refuses_more_than_the_device_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_cli, "load_data", lambda config: _tiny_data())
    monkeypatch.setattr(sweep_cli, "device_capacity_bytes", lambda: 2**20)
    assert sweep_cli.main(_cli_args(tmp_path)) == 1
    assert "one sweep member needs about" in capsys.readouterr().err


def test_an_interrupted_sweep_resumes_to_the_same_end(tmp_path, setup):
    data, _, cache = setup
    members = [Member("kd", 0), Member("kd", 1, temperature=4.0)]

    def run(directory, epochs):
        checkpoints = RunCheckpoints(tmp_path / directory, {"sweep": "resume"})
        settings = dataclasses.replace(SETTINGS, epochs=epochs, save_every_steps=2)
        result = train_members(members, data, LightNN(), settings, checkpoints, teacher=cache, cached=True,
                               log=lambda _: None)
        checkpoints.close()
        return result

    straight = run("straight", 3)
    run("resumed", 1)  # stops after epoch 1, as a killed run would have last saved
    resumed = run("resumed", 3)
    _assert_trees_close(straight.states.params, resumed.states.params, atol=0)
    assert [r.history for r in straight.results] == [r.history for r in resumed.results]


def test_merging_sweeps_keeps_each_member_once_and_catches_disagreement(tmp_path):
    from kdjax.sweep import MemberResult
    from kdjax.sweep_report import main as report_main
    from kdjax.sweep_report import merge, write_members

    first = [MemberResult(Member("ce", s), 70.0 + s, 1.0, []) for s in range(3)]
    second = [MemberResult(Member("ce", 0), 70.0, 1.0, []),
              MemberResult(Member("kd", 0, temperature=4.0), 72.0, 1.0, [])]
    assert [r.member for r in merge([first, second])] == [r.member for r in first] + [second[1].member]
    for name, results in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        write_members(tmp_path / name / "members.jsonl", results)
    assert report_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "merged")]) == 0
    assert "| CE | — | 3 | 71.00% |" in (tmp_path / "merged" / "summary.md").read_text()
    with pytest.raises(ValueError, match="in one sweep and"):
        merge([first, [MemberResult(Member("ce", 1), 75.0, 1.0, [])]])
