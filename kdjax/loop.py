"""The training loop: epochs of jitted steps, evaluation, checkpoints with resume, progress and logs."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.training.train_state import TrainState
from jax.sharding import Mesh
from tqdm.auto import tqdm

from kdjax.checkpoint import Position, RunCheckpoints
from kdjax.config import ExperimentConfig
from kdjax.data import Cifar10, ResidentLoader, StreamingLoader
from kdjax.models import ModelOutput
from kdjax.parallel import batch_mesh, replicate
from kdjax.train import LossConfig, create_train_state, make_eval_step, make_train_step

PROGRESS_EVERY = 10  # steps between progress-bar refreshes (each one waits for the device)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    """What one finished run reports."""

    name: str
    model: str
    parameters: int
    test_accuracy: float  # percent
    test_loss: float  # mean cross-entropy, nats
    train_seconds: float  # summed over all epochs, including those of earlier invocations
    images_per_second: float  # training images / train_seconds
    history: list[dict[str, float]]
    state: TrainState = dataclasses.field(repr=False)


def init_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, data order, dropout) keys; every student with the same seed starts from the same weights."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def make_loader(config: ExperimentConfig, data: Cifar10, key: jax.Array, *, train: bool, mesh: Mesh | None = None):
    split = data.train if train else data.test
    cls = ResidentLoader if config.loader == "resident" else StreamingLoader
    return cls(split, config.batch_size, key, shuffle=train, augment=train and config.augment, mesh=mesh)


def evaluate(eval_step: Callable, params: Any, loader) -> tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) over every example the loader yields."""
    totals = None
    for batch in loader.epoch(0):
        result = eval_step(params, batch)
        totals = result if totals is None else jax.tree.map(jnp.add, totals, result)
    totals = jax.device_get(totals)
    count = max(int(totals["count"]), 1)
    return 100.0 * float(totals["correct"]) / count, float(totals["loss_sum"]) / count


@jax.jit
def first_nonfinite(first_bad: jax.Array, loss: jax.Array, step: jax.Array) -> jax.Array:
    return jnp.where((first_bad < 0) & ~jnp.isfinite(loss), step, first_bad)


def train(
    config: ExperimentConfig,
    data: Cifar10,
    model: nn.Module,
    checkpoints: RunCheckpoints,
    *,
    teacher_params: Any = None,
    teacher_cache: ModelOutput | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train `model` on `config.objective`, resuming from `checkpoints` if they hold this run.

    The data order is a function of (seed, epoch) and dropout of (seed, step), so a run
    resumed from any checkpoint retraces exactly the steps an uninterrupted run takes. The
    run is data-parallel over `config.devices` (see `kdjax.parallel`); a checkpoint resumes
    on any number of devices.
    """
    init_key, data_key, dropout_key = init_keys(config.seed)
    mesh = batch_mesh(config.devices or None)
    train_loader = make_loader(config, data, data_key, train=True, mesh=mesh)  # fails fast on a bad batch size
    loss_config = LossConfig(config.objective, config.ce_weight, config.aux_weight, config.temperature)
    state = replicate(create_train_state(model, init_key, learning_rate=config.learning_rate), mesh)
    fresh_epoch = {"loss_sum": 0.0, "batches": 0, "seconds": 0.0}  # running totals of the epoch in progress
    position, history, running = Position(0, 0), [], dict(fresh_epoch)
    restored = checkpoints.restore_latest(state, dropout_key)
    if restored is not None:
        state, dropout_key, position, meta = restored  # laid out like the replicated template
        history, running = meta.get("history", []), meta.get("running", running)
        log(f"{config.name}: resuming from step {int(state.step)} (epoch {position.epoch + 1}, "
            f"batch {position.batch}) in {checkpoints.directory}")
    use_cache = teacher_cache is not None and loss_config.needs_teacher
    step_fn = make_train_step(loss_config, cached=use_cache)
    teacher_arg = replicate(teacher_cache if use_cache else teacher_params, mesh)
    dropout_key = replicate(dropout_key, mesh)
    eval_step = make_eval_step(model)
    test_loader = make_loader(config, data, data_key, train=False, mesh=mesh)
    if use_cache and not train_loader.deterministic_per_image:
        raise ValueError("a teacher-output cache needs a pipeline that feeds each example the same image every epoch")
    parameters = sum(leaf.size for leaf in jax.tree.leaves(state.params))

    first_bad = jnp.asarray(-1, jnp.int32)
    last_saved = int(state.step) if restored else None

    def check_finite() -> None:
        bad = int(first_bad)
        if bad >= 0:
            kept = f"step {last_saved} in {checkpoints.directory}" if last_saved is not None else "none saved yet"
            raise TrainingDivergedError(
                f"{config.name}: loss became NaN/Inf at step {bad + 1}; stopped. Last good checkpoint: {kept}. "
                "Lower --learning-rate or check the data."
            )

    def save(pos: Position) -> None:
        nonlocal last_saved
        check_finite()
        checkpoints.save(state, dropout_key, pos, {"history": history, "running": running})
        last_saved = int(state.step)

    for epoch in range(position.epoch, config.epochs):
        start_batch = position.batch if epoch == position.epoch else 0
        if start_batch == 0:
            running = dict(fresh_epoch)
        loss_sum = jnp.asarray(running["loss_sum"], jnp.float32)
        seconds_before = running["seconds"]  # spent on this epoch by an interrupted invocation
        bar = tqdm(total=len(train_loader), initial=start_batch, desc=f"{config.name} {epoch + 1}/{config.epochs}",
                   unit="batch", leave=False, dynamic_ncols=True)
        epoch_start, epoch_images = time.perf_counter(), 0  # images trained by this invocation
        for index, batch in enumerate(train_loader.epoch(epoch, start_batch), start=start_batch):
            state, metrics = step_fn(state, batch, dropout_key, teacher_arg)
            loss_sum = loss_sum + metrics["loss"]
            first_bad = first_nonfinite(first_bad, metrics["loss"], state.step - 1)
            epoch_images += min(config.batch_size, train_loader.num_examples - index * config.batch_size)
            done = index + 1
            if done % PROGRESS_EVERY == 0 or done == len(train_loader):
                check_finite()
                bar.set_postfix(loss=f"{float(loss_sum) / done:.4f}",
                                img_s=f"{epoch_images / (time.perf_counter() - epoch_start):,.0f}")
                bar.update(done - bar.n)
            if config.save_every_steps and done % config.save_every_steps == 0 and done < len(train_loader):
                running = {"loss_sum": float(loss_sum), "batches": done,
                           "seconds": seconds_before + time.perf_counter() - epoch_start}
                save(Position(epoch, done))
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - epoch_start
        bar.close()
        accuracy, test_loss = evaluate(eval_step, state.params, test_loader)
        summary = {"epoch": epoch + 1, "train_loss": float(loss_sum) / len(train_loader),
                   "test_accuracy": accuracy, "test_loss": test_loss, "seconds": seconds_before + elapsed}
        history.append(summary)
        running = dict(fresh_epoch)
        save(Position(epoch + 1, 0))
        log(f"{config.name} epoch {epoch + 1}/{config.epochs}: loss {summary['train_loss']:.4f}, "
            f"test accuracy {accuracy:.2f}%, {elapsed:.1f} s")

    if history and history[-1]["epoch"] == config.epochs:
        accuracy, test_loss = history[-1]["test_accuracy"], history[-1]["test_loss"]
    else:  # zero epochs: evaluate the initial weights
        accuracy, test_loss = evaluate(eval_step, state.params, test_loader)
    train_seconds = sum(row["seconds"] for row in history)
    return RunResult(
        name=config.name, model=type(model).__name__, parameters=parameters, test_accuracy=accuracy,
        test_loss=test_loss, train_seconds=train_seconds,
        images_per_second=len(history) * train_loader.num_examples / train_seconds if train_seconds else 0.0,
        history=history, state=state,
    )
