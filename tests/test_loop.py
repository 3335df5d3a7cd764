"""The one loop: members independent of their program, bitwise resume and extension, NaN stop, corrupt steps."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from engine_helpers import run_members, teacher_params, tiny_data

from kdjax import engine, methods
from kdjax.engine import memory
from kdjax.checkpoint import RunCheckpoints
from kdjax.engine import Member, ProgramSpec, TrainingDivergedError
from kdjax.zoo.tutorial import tutorial_student, tutorial_teacher
from kdjax.parallel import batch_mesh
from kdjax.teacher import Teacher
from kdjax.train import TrainState, build_objective


def _params(program, index: int):
    return jax.tree.map(lambda leaf: np.asarray(leaf[index]), program.states.params)


def _same(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_a_member_is_bitwise_the_same_alone_or_among_others_over_a_full_epoch(tmp_path):
    member = Member.of("kd", 1, temperature=4.0)
    alone, together = [], []
    run_members(tmp_path, [member], name="alone", programs_out=alone)
    others = [Member.of("kd", 0), member, Member.of("kd", 7, aux_weight=0.9)]
    run_members(tmp_path, others, name="together", programs_out=together, members_per_program=3)
    _same(_params(alone[0], 0), _params(together[0], 1))
    assert alone[0].results[0].history[0]["test_loss"] == together[0].results[1].history[0]["test_loss"]
    # ...and members really differ from each other.
    assert not np.array_equal(_params(together[0], 0)["model"]["features_0"]["kernel"],
                              _params(together[0], 1)["model"]["features_0"]["kernel"])


@pytest.mark.slow
def test_vmapped_members_agree_with_unrolled_ones_to_float_rounding(tmp_path):
    members = [Member.of("ce", 0), Member.of("ce", 1)]
    unrolled, vmapped = [], []
    run_members(tmp_path, members, name="u", programs_out=unrolled, member_batching="unroll", members_per_program=2)
    run_members(tmp_path, members, name="v", programs_out=vmapped, member_batching="vmap", members_per_program=2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 _params(unrolled[0], 1), _params(vmapped[0], 1))


@pytest.mark.slow
def test_methods_sharing_a_seed_share_one_teacher_forward_and_train_as_they_would_alone(tmp_path):
    members = [Member.of("kd", 0), Member.of("at", 0), Member.of("kd", 1)]
    together = []
    run_members(tmp_path, members, name="shared", cached=False, augment="crop-flip",
                members_per_program=3, programs_out=together)
    assert [[r.member for r in p.results] for p in together] == [members]
    for i, member in enumerate(members):
        alone = []
        run_members(tmp_path, [member], name=f"alone-{i}", cached=False, augment="crop-flip", programs_out=alone)
        # Float rounding, not bitwise: XLA:CPU's YNNPACK dot fusion may group a mixed program's ops differently
        # from a solo run's (under Eigen, KDJAX_XLA_CPU_DEFAULTS=0, they are bitwise equal).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     _params(alone[0], 0), _params(together[0], i))


def _teacher_forwards(groups: tuple[int, ...]) -> int:
    """Teacher first-layer convolutions in the jaxpr of a kd, at, kd program step with these data groups."""
    data = tiny_data()
    objectives = tuple(build_objective(methods.get(m), tutorial_student(), tutorial_teacher())
                       for m in ("kd", "at", "kd"))
    spec = ProgramSpec(objectives[0], 32, len(data.train), "none", True, batch_mesh(1), objectives=objectives,
                       data_groups=groups)
    members = [Member.of("kd", 0), Member.of("at", 0), Member.of("kd", 1)]
    keys = jax.numpy.stack([jax.random.key(s) for s in (0, 0, 1)])
    jaxpr = jax.make_jaxpr(lambda *args: engine.program_step(*args, spec=spec))(
        engine.init_states(objectives[0], [0, 0, 1], 1e-3), jax.numpy.zeros((3, 160), jax.numpy.int32), np.int32(0),
        np.int32(0), data.train.arrays(), Teacher(tutorial_teacher(), *teacher_params()), keys, keys,
        engine.stack_hyperparameters(members))

    def count(jaxpr) -> int:
        found = 0
        for eqn in jaxpr.eqns:
            found += eqn.primitive.name == "conv_general_dilated" and eqn.invars[1].aval.shape == (3, 3, 3, 128)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    found += count(inner) if hasattr(inner, "eqns") else 0
        return found

    return count(jaxpr.jaxpr)


@pytest.mark.slow
def test_one_teacher_forward_per_data_group():
    assert _teacher_forwards((0, 0, 2)) * 3 == _teacher_forwards((0, 1, 2)) * 2 > 0


def test_the_program_step_compiles_once_across_epochs_batches_and_hyperparameters():
    data = tiny_data()
    objective = build_objective(methods.get("kd"), tutorial_student(), tutorial_teacher())
    spec = ProgramSpec(objective, 32, len(data.train), "none", True, batch_mesh(1))
    step = jax.jit(chex.assert_max_traces(lambda *args: engine.program_step(*args, spec=spec), n=1))
    members = [Member.of("kd", 0), Member.of("kd", 1, temperature=8.0)]
    states = engine.init_states(objective, [0, 1], 1e-3)
    keys = jax.numpy.stack([jax.random.key(0), jax.random.key(1)])
    orders = jax.numpy.zeros((2, 160), jax.numpy.int32)
    teacher = Teacher(tutorial_teacher(), *teacher_params())
    for epoch, index in ((0, 0), (0, 3), (2, 1)):
        states, metrics = step(states, orders, np.int32(epoch), np.int32(index), data.train.arrays(), teacher, keys,
                               keys, engine.stack_hyperparameters(members))
    assert metrics["loss"].shape == (2,)
    chex.clear_trace_counter()


@pytest.mark.slow
def test_cache_and_live_teacher_train_the_same_student(tmp_path):
    members = [Member.of("hint", 0)]
    cached = run_members(tmp_path, members, name="cached", cached=True)
    live = run_members(tmp_path, members, name="live", cached=False)
    np.testing.assert_allclose(cached[0].test_loss, live[0].test_loss, rtol=1e-5)


@pytest.mark.slow
def test_extending_a_finished_run_equals_running_it_straight_and_a_rerun_trains_nothing(tmp_path):
    members = [Member.of("kd", 0)]
    straight, extended, rerun = [], [], []
    run_members(tmp_path, members, epochs=2, name="straight", programs_out=straight)
    run_members(tmp_path, members, epochs=1, name="ext")
    run_members(tmp_path, members, epochs=2, name="ext", programs_out=extended)
    _same(_params(straight[0], 0), _params(extended[0], 0))
    assert [r["test_loss"] for r in extended[0].results[0].history] == [
        r["test_loss"] for r in straight[0].results[0].history]
    run_members(tmp_path, members, epochs=2, name="ext", programs_out=rerun)
    assert rerun[0].trained_steps == 0 and extended[0].trained_steps == 5
    # Asking for fewer epochs than were trained reads the earlier epoch's checkpoint back.
    back = run_members(tmp_path, members, epochs=1, name="ext")
    assert back[0].history == extended[0].results[0].history[:1]


@pytest.mark.slow
def test_resuming_from_a_mid_epoch_checkpoint_is_bitwise(tmp_path, monkeypatch):
    members = [Member.of("ce", 3), Member.of("ce", 4)]
    straight, resumed = [], []
    run_members(tmp_path, members, name="straight", programs_out=straight, members_per_program=2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the epoch's 5 steps, before its end is saved

    with monkeypatch.context() as patch:
        patch.setattr(engine.loop, "evaluate_members", killed)
        with pytest.raises(KeyboardInterrupt):
            run_members(tmp_path, members, name="cut", save_every_steps=2, members_per_program=2)
    checkpoints = RunCheckpoints(tmp_path / "cut" / "ce", {"test": "cut"})
    assert checkpoints.steps() == [4]  # mid-epoch step 2 was superseded by step 4
    checkpoints.close()
    run_members(tmp_path, members, name="cut", programs_out=resumed, save_every_steps=2, members_per_program=2)
    _same(_params(straight[0], 1), _params(resumed[0], 1))


@pytest.mark.slow
def test_a_corrupt_newest_step_is_moved_aside_and_written_again(tmp_path, capsys):
    members = [Member.of("ce", 0)]
    run_members(tmp_path, members, epochs=2, name="c")
    folder = tmp_path / "c" / "ce"
    for file in (folder / "10").rglob("*"):
        if file.is_file() and "state" in str(file) and file.stat().st_size > 1000:
            file.write_bytes(b"garbage")
    rerun = []
    run_members(tmp_path, members, epochs=2, name="c", programs_out=rerun)
    assert "checkpoint step 10" in capsys.readouterr().err
    assert rerun[0].trained_steps == 5
    assert (folder / "10").is_dir() and list(folder.glob("10.corrupt-*"))
    again = []
    run_members(tmp_path, members, epochs=2, name="c", programs_out=again)
    assert again[0].trained_steps == 0


def test_a_diverging_member_stops_the_program_naming_it(tmp_path):
    member = Member.of("ce", 0)
    data = tiny_data()
    data.train.inputs[:] = 0
    # Adam moves every weight by about the rate: 3e38 (float32 holds up to 3.4e38) overflows the second step.
    with pytest.raises(TrainingDivergedError, match=r"ce\[seed=0\] at step 2.*last good checkpoint"):
        run_members(tmp_path, [member], data=data, learning_rate=3e38)


@pytest.mark.slow
def test_members_split_into_programs_that_fit_and_get_the_same_results(tmp_path, monkeypatch):
    members = [Member.of("ce", seed) for seed in range(3)]
    whole, chunked = [], []
    run_members(tmp_path, members, name="whole", programs_out=whole, members_per_program=3)
    data = tiny_data()
    objective = build_objective(methods.get("ce"), tutorial_student())
    plan = engine.plan_program_size({objective.method: objective}, members, data.train, engine.Settings(batch_size=32),
                                  None)
    # Capacity for one member and a half: the three members run as three programs.
    monkeypatch.setattr(memory, "device_capacity_bytes",
                        lambda device=None: int((plan.shared_bytes + 1.5 * plan.per_member_bytes) / 0.8))
    run_members(tmp_path, members, name="chunked", programs_out=chunked)
    assert [len(p.results) for p in whole] == [3] and [len(p.results) for p in chunked] == [1, 1, 1]
    for i in range(3):
        _same(_params(whole[0], i), _params(chunked[i], 0))
    monkeypatch.setattr(memory, "device_capacity_bytes", lambda device=None: 2**16)
    with pytest.raises(memory.ProgramMemoryError, match="one member needs about .* MiB"):
        run_members(tmp_path, members, name="none")


def test_a_program_of_several_methods_is_planned_by_the_most_demanding(monkeypatch):
    measured = {"kd": (10 * 2**20, 50 * 2**20), "at": (30 * 2**20, 20 * 2**20)}  # (per member, shared)
    monkeypatch.setattr(memory, "member_bytes", lambda objective, *args: measured[objective.method.name])
    monkeypatch.setattr(memory, "device_capacity_bytes", lambda device=None: int(200 * 2**20 / 0.8))
    teacher, student = tutorial_teacher(), tutorial_student()
    objectives = {methods.get(name): build_objective(methods.get(name), student, teacher) for name in measured}
    members = [Member.of("kd", 0), Member.of("at", 0), Member.of("kd", 1)]
    args = (tiny_data().train, engine.Settings(batch_size=32), None)
    mixed = engine.plan_program_size(objectives, members, *args)
    assert (mixed.per_member_bytes, mixed.shared_bytes, mixed.fits) == (30 * 2**20, 50 * 2**20, 5)  # (200-50)//30
    assert engine.plan_program_size(objectives, members[::2], *args).fits == 15  # kd alone: (200-50)//10


@pytest.mark.parametrize("augment", ["flip", "crop-flip"])
def test_evaluating_on_augmented_views_scores_the_views_a_training_step_draws(augment):
    import optax

    from kdjax.data import augment_batch, normalize

    data, key, teacher = tiny_data(), jax.random.key(3), tutorial_teacher()
    objective = build_objective(methods.get("ce"), teacher)
    stacked = jax.tree.map(lambda leaf: leaf[None], teacher_params())
    states = TrainState(step=0, apply_fn=None, params={"model": stacked[0]}, tx=None, opt_state=None,
                        model_state={"model": stacked[1]})
    accuracy, loss = engine.evaluate_members(objective, states, data.test, 32, True, augment=augment, key=key)
    hits, losses = 0, []
    for index in range(2):
        labels = data.test.labels[32 * index:32 * (index + 1)]
        batch = {"inputs": normalize(data.test.inputs[32 * index:32 * (index + 1)]), "label": labels}
        view = augment_batch(batch, key, 0, index, crop=4 if augment == "crop-flip" else 0)["inputs"]
        logits, _, _ = teacher.forward(*teacher_params(), view, train=False)
        hits += int(np.sum(np.argmax(logits, -1) == labels))
        losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    np.testing.assert_allclose(accuracy, [100 * hits / 64])
    np.testing.assert_allclose(loss, [np.mean(np.concatenate(losses))], rtol=1e-5)
    _, clean_loss = engine.evaluate_members(objective, states, data.test, 32, True)
    assert abs(clean_loss[0] - loss[0]) > 1e-4  # the views are not the images
    with pytest.raises(ValueError, match="augment must be one of"):
        engine.evaluate_members(objective, states, data.test, 32, True, augment="rotate")
