"""The one training loop: N >= 1 members in programs, epoch by epoch, with checkpoints, progress and evaluation.

`train_members` groups the members into programs (`kdjax.engine.members`) that fit the device
(`kdjax.engine.memory`), decides how the teacher serves them (`kdjax.teacher`) and trains each
program (`train_program`): the jitted step (`kdjax.engine.step`) over every batch, evaluation
(`kdjax.engine.evaluate`) after every epoch. Checkpoints (`kdjax.checkpoint`) are written every
epoch end and every `save_every_steps` steps; a rerun resumes from the newest one bitwise, and
a finished program extends to more epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.checkpoint import Position, RunCheckpoints
from kdjax.data import Split
from kdjax.data.pipeline import epoch_order, num_batches
from kdjax.data.stream import StreamingLoader
from kdjax.engine import memory
from kdjax.engine.evaluate import evaluate_members
from kdjax.engine.members import (Member, MemberResult, ProgramResult, chunks, data_groups, program_name, programs,
                                  reads_teacher, stack_hyperparameters)
from kdjax.engine.step import ProgramSpec, first_nonfinite, init_states, jitted_step, state_shardings, unrolls
from kdjax.methods import TOPK_READ, Method
from kdjax.network import Network
from kdjax.optimizers import make_optimizer
from kdjax.parallel import batch_mesh, check_batch_size, check_layout, place, replicate
from kdjax.progress import EpochProgress
from kdjax.tasks import NEXT_TOKEN
from kdjax.teacher import CachedTeacher, Teacher, TeacherLike, cache_off_reason, cache_outputs
from kdjax.train import Objective, Settings, build_objective, init_keys

PROGRESS_EVERY = 10  # steps between progress-bar refreshes (each one waits for the device)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class InterruptGuard:
    """While active, Ctrl-C (SIGINT) or SIGTERM only sets `requested`: the loop saves where it stands at the next
    step boundary, then raises KeyboardInterrupt. A second signal acts at once. Off the main thread it is inert."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self.requested and kind is None:  # asked for after the last step: stop before the next program
            raise KeyboardInterrupt


TeacherSource = Callable[[], TeacherLike]  # the teacher or its cache; called only when a step must run


def train_program(
    members: Sequence[Member], objectives: Mapping[Method, Objective], train_split: Split, test_split: Split,
    settings: Settings, checkpoints: RunCheckpoints, *, teacher_source: TeacherSource | None = None,
    log: Callable[[str], None] = print, desc: str = "train",
) -> ProgramResult:
    """Train `members` together for `settings.epochs`, resuming from `checkpoints`.

    `objectives` maps each member's method to its objective. Members of different methods
    share a program only when it is unrolled and their parameter trees match (no adapter);
    members with one seed then share each batch and teacher forward. `teacher_source`
    supplies the `Teacher` or its `CachedTeacher` when a step must run (not for a finished
    program). A NaN/Inf loss in any member stops the program with `TrainingDivergedError`,
    naming the member and step; the last good checkpoint is kept.
    """
    missing = sorted({m.name for m in members if m.method not in objectives})
    if missing:
        raise ValueError(f"no objective for method(s) {missing} of the program's members")
    per_member = tuple(objectives[m.method] for m in members)
    objective, mixed = per_member[0], len({m.method for m in members}) > 1
    needs_teacher = any(o.method.needs_teacher for o in per_member)
    if needs_teacher and teacher_source is None:
        raise ValueError(f"{program_name(members)} needs a teacher")
    mesh = batch_mesh(settings.devices or None)
    check_batch_size(settings.batch_size, mesh)
    check_layout(settings.parameter_sharding, mesh)
    n, batch_size = len(train_split), settings.batch_size
    settings.check_data(sequence=train_split.task is NEXT_TOKEN, examples=n)
    unroll = unrolls(settings, mesh)
    if mixed and (not unroll or any(o.adapter is not None for o in per_member)):
        raise ValueError(f"methods {program_name(members)} cannot share a program: that needs unrolled members "
                         "(--member-batching unroll) and methods without adapters")
    count = len(members)
    keys = [init_keys(m.seed) for m in members]
    data_keys = jnp.stack([k[1] for k in keys])
    dropout_keys = jnp.stack([k[2] for k in keys])
    states = init_states(objective, [m.seed for m in members], make_optimizer(settings, num_batches(n, batch_size)))
    parameters = sum(leaf[0].size for leaf in jax.tree.leaves(states.params))

    position, history, running, partial_seconds = Position(0, 0), [[] for _ in members], np.zeros(count), 0.0
    restored = checkpoints.restore_latest(states, dropout_keys, until_epoch=settings.epochs)
    if restored is not None:
        states, dropout_keys, position, meta = restored
        history, running = meta["history"], np.asarray(meta.get("running", running))
        partial_seconds = meta.get("seconds", 0.0)
        if position == Position(settings.epochs, 0):
            log(f"{desc}: already trained for {settings.epochs} epochs (step {int(states.step[0])}) in "
                f"{checkpoints.directory}")
        else:
            log(f"{desc}: resuming at epoch {position.epoch + 1}, batch {position.batch} "
                f"(step {int(states.step[0])}) from {checkpoints.directory}")

    trained = 0
    if position < Position(settings.epochs, 0):
        teacher_arg = teacher_source() if needs_teacher else None
        loader, why = memory.loader_choice(train_split, settings, mesh)
        if settings.data_loader == "auto":  # train_members decides once for all its programs, and says why
            log(f"{desc}: {loader} data ({why})")
        spec = ProgramSpec(objective, batch_size, n, settings.augment, unroll, mesh,
                           settings.labelled, settings.normalization, per_member if mixed else (),
                           data_groups(members) if unroll else (), settings.parameter_sharding,
                           streamed=loader == "streaming")
        states, dropout_keys, trained = _run_epochs(
            spec, members, states, dropout_keys, data_keys, teacher_arg, train_split, test_split, settings,
            checkpoints, position, history, running, partial_seconds, log, desc)

    results = []
    for i, member in enumerate(members):
        final = history[i][-1]
        seconds = sum(row["seconds"] for row in history[i])
        results.append(MemberResult(member, objective.student.name, parameters, final["test_accuracy"],
                                    final["test_loss"], seconds, len(history[i]) * n / seconds if seconds else 0.0,
                                    history[i], program=program_name(members)))
    return ProgramResult(results, states, trained)


def _run_epochs(spec: ProgramSpec, members, states, dropout_keys, data_keys, teacher_arg, train_split: Split,
                test_split: Split, settings: Settings, checkpoints: RunCheckpoints, position: Position,
                history: list, running: np.ndarray, partial_seconds: float, log, desc: str):
    mesh, count, n = spec.mesh, len(members), spec.num_examples
    batches = num_batches(n, spec.batch_size)
    step = jitted_step(spec)
    states = place(states, state_shardings(states, spec))
    teacher_arg = None if teacher_arg is None else teacher_arg.on(mesh, spec.parameter_sharding)
    dropout_keys, data_keys = replicate((dropout_keys, data_keys), mesh)
    hyperparameters = replicate(stack_hyperparameters(members), mesh)
    task, positions = train_split.task, int(np.prod(train_split.labels.shape[1:]))  # tokens per example, or 1
    if spec.streamed:  # one stream per seed, drawn by its first member's key; a member reads its seed's
        groups = data_groups(members)
        first = sorted(set(groups))
        loader = StreamingLoader(train_split, spec.batch_size, data_keys[np.asarray(first)], mesh=mesh,
                                 workers=settings.stream_workers)
        streams = replicate(jnp.asarray([first.index(g) for g in groups], jnp.int32), mesh)
        orders_for = lambda keys, epoch: streams  # noqa: E731 - what selects a member's batch
    else:
        data = replicate(train_split.arrays(), mesh)
        orders_for = jax.jit(jax.vmap(lambda key, epoch: epoch_order(key, epoch, n, spec.batch_size),
                                      in_axes=(0, None)))
    first_bad = jnp.full((count,), -1, jnp.int32)
    trained = 0

    methods_of = [m.name for m in members]

    def loss_text(losses: np.ndarray) -> str:
        """The mean loss, per method where methods differ: their objectives are not comparable."""
        names = list(dict.fromkeys(methods_of))
        if len(names) == 1:
            return f"{float(np.mean(losses)):.4f}"
        return ", ".join(f"{name} {float(np.mean([v for v, m in zip(losses, methods_of) if m == name])):.4f}"
                         for name in names)

    def check_finite(bar) -> None:
        bad = np.asarray(first_bad)
        if (bad >= 0).any():
            bar.close()
            names = "; ".join(f"{members[i].label} at step {bad[i] + 1}" for i in np.flatnonzero(bad >= 0))
            raise TrainingDivergedError(
                f"{desc}: loss or model state became NaN/Inf for {names}; stopped, keeping the last good checkpoint "
                f"in {checkpoints.directory}. Lower --learning-rate or drop that setting.")

    def save(pos: Position, loss_sums, bar) -> None:
        check_finite(bar)
        checkpoints.save(states, dropout_keys, pos, {"history": history, "running": np.asarray(loss_sums).tolist(),
                                                     "seconds": seconds_so_far}, step=int(states.step[0]))

    with InterruptGuard() as interrupt:
        for epoch in range(position.epoch, settings.epochs):
            start_batch = position.batch if epoch == position.epoch else 0
            loss_sums = jnp.asarray(running if start_batch else np.zeros(count), jnp.float32)
            seconds_before = partial_seconds if start_batch else 0.0  # spent on this epoch by an interrupted run
            orders = orders_for(data_keys, epoch)
            bar = EpochProgress(f"{desc} {epoch + 1}/{settings.epochs}", batches, start_batch, task.examples,
                                log=log, log_every=settings.log_every_steps, enabled=jax.process_index() == 0)
            epoch_start, examples_done = time.perf_counter(), 0
            seconds_so_far = seconds_before
            streamed = loader.epoch(epoch, start_batch) if spec.streamed else None
            for index in range(start_batch, batches):
                if streamed is not None:
                    data = next(streamed)
                if interrupt.requested:  # between steps, so the checkpoint and the running sums agree
                    bar.close()
                    seconds_so_far = seconds_before + time.perf_counter() - epoch_start
                    if index > start_batch:
                        save(Position(epoch, index), loss_sums, bar)
                        log(f"{desc}: interrupted; saved epoch {epoch + 1}, batch {index} in {checkpoints.directory}")
                    if streamed is not None:
                        streamed.close()
                    raise KeyboardInterrupt
                states, metrics = step(states, orders, np.int32(epoch), np.int32(index), data, teacher_arg,
                                       data_keys, dropout_keys, hyperparameters)
                loss_sums = loss_sums + metrics["loss"]
                first_bad = first_nonfinite(first_bad, metrics["finite"], states.step - 1)
                examples_done += min(spec.batch_size, n - index * spec.batch_size) * positions
                trained += 1
                done = index + 1
                if index == start_batch:  # the rate leaves compilation out
                    jax.block_until_ready(loss_sums)
                    bar.first_step_done(done, count * examples_done)
                if done % PROGRESS_EVERY == 0 or done % max(settings.log_every_steps, 1) == 0 or done == batches:
                    check_finite(bar)
                    bar.update(done, count * examples_done, loss_text(np.asarray(loss_sums) / done))
                if settings.save_every_steps and done % settings.save_every_steps == 0 and done < batches:
                    seconds_so_far = seconds_before + time.perf_counter() - epoch_start
                    save(Position(epoch, done), loss_sums, bar)
            jax.block_until_ready(states)
            elapsed = time.perf_counter() - epoch_start
            if streamed is not None:
                streamed.close()
                if loader.skipped:
                    log(f"{desc} epoch {epoch + 1}: skipped {loader.skipped:,} unreadable image(s) (no weight)")
            bar.close()
            check_finite(bar)
            accuracy, test_loss = evaluate_members(spec.objective, states, test_split, spec.batch_size,
                                                   spec.unroll, mesh, normalization=spec.normalization,
                                                   streamed=spec.streamed, workers=settings.stream_workers)
            train_loss = np.asarray(loss_sums) / batches
            for i in range(count):
                history[i].append({"epoch": epoch + 1, "train_loss": float(train_loss[i]),
                                   "test_accuracy": float(accuracy[i]), "test_loss": float(test_loss[i]),
                                   "seconds": seconds_before + elapsed,
                                   "images_per_second": examples_done / elapsed})
            seconds_so_far = 0.0
            save(Position(epoch + 1, 0), np.zeros(count), bar)
            members_text = "" if count == 1 else f" over {count} members"
            log(f"{desc} epoch {epoch + 1}/{settings.epochs}: loss {loss_text(train_loss)}, "
                f"{task.epoch_text(accuracy, test_loss)}{members_text}, {elapsed:.1f} s, "
                f"{count * examples_done / elapsed:,.0f} {task.examples}/s")
    return states, dropout_keys, trained


def train_members(
    members: Sequence[Member], student: Network, train_split: Split, test_split: Split, settings: Settings,
    checkpoints_for: Callable[[Sequence[Member]], RunCheckpoints], *, teacher: TeacherLike | None = None,
    cache: bool = True, log: Callable[[str], None] = print, desc: str = "train",
) -> list[ProgramResult]:
    """Train every member: one program per method, split into programs that fit the device's memory.

    `checkpoints_for(members)` gives each program its checkpoints; `settings.members_per_program`
    caps a program's size by hand. `teacher` serves the members whose methods read one (an offline
    teacher, a `CachedTeacher` of stored outputs, is served as it is); a network's
    outputs are computed once over `train_split` where a cache cannot change the results
    (`kdjax.teacher.cache_off_reason`; never with `cache=False`); otherwise it runs inside every
    step, and unrolled members of the methods that read it share one program, so that members
    with one seed pay for one teacher forward per step between them.
    """
    network = teacher.network if isinstance(teacher, Teacher) else None
    objectives = {method: build_objective(method, student, network if method.needs_teacher_network else None)
                  for method in dict.fromkeys(m.method for m in members)}
    reads = tuple(dict.fromkeys(r for o in objectives.values() for r in o.teacher_reads))
    if train_split.task is NEXT_TOKEN or any(o.student.head is not None for o in objectives.values()):
        for objective in objectives.values():
            log(f"{desc} step, {objective.describe_path()}")
    if any(o.method.needs_teacher for o in objectives.values()) and teacher is None:
        raise ValueError(f"{', '.join(m.name for m in objectives if m.needs_teacher)} need(s) a teacher")
    mesh = batch_mesh(settings.devices or None)
    # Decided once: the memory planner, the teacher cache and every program then agree (and `auto` measures the
    # devices' memory, across processes, only here).
    loader, why = memory.loader_choice(train_split, settings, mesh)
    log(f"{desc}: {loader} data ({why})")
    settings = dataclasses.replace(settings, data_loader=loader)
    source, share = None, False
    if isinstance(teacher, CachedTeacher) and reads:  # a table already (an offline teacher): served as it is
        missing = [read for read in reads if read not in teacher.table]
        if missing:
            raise ValueError(f"the teacher given holds {sorted(teacher.table)}, but the methods read {missing}: "
                             "methods that run a teacher need a network")
        source = functools.cache(lambda: teacher)
    elif teacher is not None and reads:
        if TOPK_READ in reads:
            raise ValueError("top-k methods read an offline teacher's stored logits: give one (--teacher-topk DIR, "
                             "written by python -m kdjax.offline)")
        reason = cache_off_reason(teacher, train_split, reads, augment=settings.augment, wanted=cache,
                                  streamed=loader == "streaming",
                                  capacity_bytes=memory.mesh_capacity_bytes(mesh))
        if reason:
            log(f"teacher cache off ({reason}): the teacher runs inside every {desc} step")
        share = reason is not None and unrolls(settings, mesh)
        source = functools.cache(lambda: teacher if reason else _cached(teacher, train_split, reads, settings, log))
    results = []
    for group in programs(members, share_teacher_forward=share):
        size = settings.members_per_program or len(group)
        if len(group) > 1 and not settings.members_per_program:
            plan = memory.plan_program_size(objectives, group, train_split, settings,
                                     source() if source and reads_teacher(group) else None)
            log(f"{desc} {program_name(group)}: {plan.describe()}")
            size = plan.fits
        for chunk in chunks(group, size):
            label = desc if len(members) == 1 else f"{desc} {program_name(chunk)}"
            checkpoints = checkpoints_for(chunk)
            try:
                results.append(train_program(chunk, objectives, train_split, test_split, settings, checkpoints,
                                             teacher_source=source, log=log, desc=label))
            finally:
                checkpoints.close()
    return results


def _cached(teacher: Teacher, split: Split, reads: Sequence[str], settings: Settings,
            log: Callable[[str], None]) -> CachedTeacher:
    start = time.perf_counter()
    cached = jax.block_until_ready(cache_outputs(teacher, split, reads, normalization=settings.normalization))
    log(f"teacher cache: {', '.join(sorted(reads))} for {len(split):,} {split.task.examples} in "
        f"{time.perf_counter() - start:.1f} s")
    return cached
