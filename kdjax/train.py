"""One member's train state and its pure, jittable train and eval steps.

A member trains a student `Network` on a `Method` (`kdjax.methods`). Its params are
`{"model": student params, "adapter": adapter params}` (the adapter only for methods that
declare one); its `model_state` has the same keys and holds what each keeps besides params
(BatchNorm's running statistics), updated by every train step and never differentiated.
A batch is a dict (`kdjax.tasks`): `inputs` `[batch, *input_shape]` (float32 images or int32
token ids), `label` (`[batch]` classes, or `[batch, time]` next tokens) and optionally `mask`
of the labels' shape, marking the positions that count (padding excluded). Nothing
here reads files or prints; `kdjax.engine` runs these steps for N members on a device mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state

from kdjax import losses
from kdjax.data.normalization import TUTORIAL_NORMALIZATION, Normalization
from kdjax.data.stream import LOADERS as DATA_LOADERS
from kdjax.fields import require, setting
from kdjax.losses.fused import fused_objective
from kdjax.methods import TOPK_READ, Context, Method
from kdjax.network import HEAD_READ, Network
from kdjax.optimizers import OPTIMIZERS, SCHEDULES
from kdjax.parallel import PARAMETER_SHARDING

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TeacherOutputs = Mapping[str, jax.Array]


AUGMENTATIONS = ("none", "flip", "crop-flip")
MEMBER_BATCHING = ("auto", "unroll", "vmap")  # how members share a program: `kdjax.engine.map_members`


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every member of a program shares, checked when made. Defaults are the PyTorch tutorial's."""

    epochs: int = setting(10, "training epochs of each member")
    batch_size: int = setting(128, "examples per step (split over the devices)")
    learning_rate: float = setting(1e-3, "base learning rate of Adam or SGD, before the schedule")
    optimizer: str = setting("adam", "adam (the tutorial's) or sgd (PyTorch's SGD with momentum)", identity="changed")
    momentum: float = setting(0.9, "SGD momentum (0: plain SGD)", identity="changed")
    nesterov: bool = setting(False, "Nesterov momentum (SGD)", identity="changed")
    weight_decay: float = setting(0.0, "weight decay added to the gradient, as PyTorch's optimizers do it (not "
                                       "decoupled)", identity="changed")
    schedule: str = setting("constant", "learning-rate schedule: constant, step (x --decay-factor at each of "
                                        "--milestones) or cosine (to 0)", identity="changed")
    milestones: tuple[int, ...] = setting((), "comma-separated epochs at which the step schedule decays",
                                          identity="changed")
    decay_factor: float = setting(0.1, "the step schedule's factor per milestone", identity="changed")
    warmup_epochs: float = setting(0.0, "scale the learning rate up linearly over this many epochs",
                                   identity="changed")
    # (mean, std) per channel of [0, 1] pixels (uint8 / 255); resolved from the data, never a flag
    normalization: Normalization = dataclasses.field(default=TUTORIAL_NORMALIZATION,
                                                     metadata={"identity": "changed"})
    save_every_steps: int = setting(200, "also checkpoint every N steps inside an epoch (0: only at epoch ends)",
                                    identity="never")
    augment: str = setting("none", "random augmentation (not in the tutorial; disables the teacher cache): flip "
                                   "mirrors images left-right, crop-flip also takes random 32x32 crops of the "
                                   "4-pixel padded image; --augment alone means flip")
    devices: int = setting(0, "train data-parallel on the first N devices, the batch split between them (0: all "
                              "devices)", identity="never")
    parameter_sharding: str = setting("replicated", "replicated (every device holds the whole model) or fsdp (fully "
                                                    "sharded data parallel: each parameter, its optimiser state and "
                                                    "the teacher's split over the devices)", identity="never")
    member_batching: str = setting("auto", "how members share a program: unroll (one after another), vmap, or auto "
                                           "(unroll on CPU)", identity="never")
    members_per_program: int = setting(0, "at most N members per compiled program (0: as many as fit in memory)",
                                       identity="never")
    data_loader: str = setting("auto", "resident (the whole split on the device, batches gathered there), streaming "
                                       "(read batch by batch on the host by grain: data larger than the device, "
                                       "image folders) or auto (resident when the split takes at most half the "
                                       "device's free memory)", identity="never")
    stream_workers: int | None = setting(None, "grain worker processes that decode streamed image files (0: the "
                                               "main process; default: one per CPU core)", identity="never")
    labelled: int | None = None  # only the first N examples' labels count (CE); None: all
    log_every_steps: int = setting(100, "where the output is no terminal, a progress line (step, images/s, time "
                                        "left) every N steps (0: none; a terminal shows a progress bar)",
                                   identity="never")

    def __post_init__(self):
        milestones = list(self.milestones)
        require([
            (self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}"),
            (self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
             f"must be a finite number > 0, got {self.learning_rate}"),
            (self.optimizer in OPTIMIZERS, "optimizer",
             f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}"),
            (not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov",
             "needs optimizer sgd with momentum > 0", ("optimizer", "momentum")),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             f"must be a finite number >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.schedule != "step" or bool(milestones), "schedule", "step needs milestones, e.g. 150,180,210",
             ("milestones",)),
            (all(m > 0 for m in milestones) and milestones == sorted(set(milestones)), "milestones",
             f"must be increasing epochs > 0, got {','.join(map(str, milestones))}"),
            (0 < self.decay_factor <= 1, "decay_factor", f"must be in (0, 1], got {self.decay_factor}"),
            (self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}"),
            (self.save_every_steps >= 0, "save_every_steps", f"must be >= 0, got {self.save_every_steps}"),
            (self.log_every_steps >= 0, "log_every_steps", f"must be >= 0, got {self.log_every_steps}"),
            (self.augment in AUGMENTATIONS, "augment",
             f"must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.devices >= 0, "devices", f"must be >= 0 (0: all devices), got {self.devices}"),
            (self.parameter_sharding in PARAMETER_SHARDING, "parameter_sharding",
             f"must be one of {', '.join(PARAMETER_SHARDING)}, got {self.parameter_sharding!r}"),
            (self.member_batching in MEMBER_BATCHING, "member_batching",
             f"must be one of {', '.join(MEMBER_BATCHING)}, got {self.member_batching!r}"),
            (self.members_per_program >= 0, "members_per_program", f"must be >= 0, got {self.members_per_program}"),
            (self.labelled is None or self.labelled > 0, "labelled", f"must be > 0, got {self.labelled}"),
            (self.data_loader in DATA_LOADERS, "data_loader",
             f"must be one of {', '.join(DATA_LOADERS)}, got {self.data_loader!r}"),
            (self.stream_workers is None or self.stream_workers >= 0, "stream_workers",
             f"must be >= 0, got {self.stream_workers}"),
        ])

    def check_data(self, *, sequence: bool, examples: int | None = None) -> None:
        """Raise SettingError if these settings cannot train on next-token (`sequence`) or image data of
        `examples` training examples (None: not known yet)."""
        require([(not (sequence and self.augment != "none"), "augment",
                  f"{self.augment} flips and crops images; next-token data takes augment none", ("augment",)),
                 (examples is None or self.batch_size <= examples, "batch_size",
                  f"{self.batch_size} exceeds the {examples or 0:,} training examples")])


class TrainState(train_state.TrainState):
    """Flax's train state plus the model's non-trainable state (`{"model": ..., ["adapter": ...]}`)."""

    model_state: Any = struct.field(default_factory=dict)


CE_ONLY = {"ce_weight": 1.0, "aux_weight": 0.0}  # the weights of a method without an auxiliary term


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """What a member minimises: `method` on `student`, with the method's adapter built for this pair.

    `teacher_head`: the teacher declares its output head, so a fused step reads its hidden
    states and head instead of its logits.
    """

    method: Method
    student: Network
    adapter: nn.Module | None = None
    teacher_head: bool = False

    @property
    def fused(self) -> bool:
        """The step computes its losses from the student's output head chunk by chunk (`kdjax.losses.fused`):
        the student declares a head and the method is CE or has a per-position form."""
        return self.student.head is not None and (self.method.loss is None or self.method.per_position is not None)

    @property
    def teacher_reads(self) -> tuple[str, ...]:
        """What the step reads from the teacher: the method's roles, or the teacher's head on the fused path."""
        if not self.method.needs_teacher:
            return ()
        return (HEAD_READ,) if self.fused and self.teacher_head else self.method.reads

    def describe_path(self) -> str:
        """Which way the step computes its losses, for the log."""
        if not self.fused:
            why = ("declares no output head" if self.student.head is None else
                   f"is trained with {self.method.name}, which has no per-position form")
            return f"{self.method.name}: full logits ({self.student.name} {why})"
        if not self.method.needs_teacher:
            return f"{self.method.name}: fused head (logits one chunk of tokens at a time, never [tokens, vocab])"
        if not self.method.needs_teacher_network:
            return f"{self.method.name}: fused head (the student's logits one chunk at a time; the stored top-k teacher)"
        if self.teacher_head:
            return f"{self.method.name}: fused head (the student's and the teacher's logits one chunk at a time)"
        return (f"{self.method.name}: fused head for the student; the teacher's full logits (it declares no output "
                "head)")


def build_objective(method: Method, student: Network, teacher: Network | None = None) -> Objective:
    """Check that `student` and `teacher` have the roles `method` reads, and build its adapter."""
    if method.needs_teacher_network and teacher is None:
        raise ValueError(f"method {method.name!r} needs a teacher network")
    if method.sampling is not None and (len(student.input_shape) != 1 or
                                        not jnp.issubdtype(student.input_dtype, jnp.integer)):
        raise ValueError(f"method {method.name!r} samples continuations of token windows: it distils language models, "
                         f"and {student.name} takes {student.input_shape} {jnp.dtype(student.input_dtype).name} inputs")
    if teacher is not None and method.roles:
        teacher.output_shapes(method.roles)  # raises, naming the missing role
    adapter = None
    if method.adapter is not None:
        student_shape = student.output_shapes([method.adapted])[method.adapted]
        teacher_shape = teacher.output_shapes([method.adapted])[method.adapted]
        adapter = method.adapter(student_shape, teacher_shape)
    elif method.roles:
        student.output_shapes(method.roles)
    return Objective(method, student, adapter, teacher_head=teacher is not None and teacher.head is not None)


def init_keys(seed: int | jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, data order, dropout) keys from a seed or a key; every member with the same seed starts from the same
    weights."""
    root = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def init_params(objective: Objective, key: jax.Array) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, model state), each `{"model": ..., ["adapter": ...]}`, from `key`; the same key gives the same
    model params for every method.

    The network's initialiser is jitted once per network (values as run eagerly): eagerly, every
    parameter's random draw would be compiled on its own, and a fresh `jit` per call would
    compile the whole initialiser again for every member.
    """
    model_params, model_state = _jitted_init(objective.student)(key)
    params, state = {"model": model_params}, {"model": model_state}
    if objective.adapter is not None:
        shape = objective.student.output_shapes([objective.method.adapted], batch=1)[objective.method.adapted]
        variables = dict(objective.adapter.init(key, jnp.zeros(shape, jnp.float32)))
        params["adapter"] = variables.pop("params")
        state["adapter"] = variables
    return params, state


@functools.lru_cache(maxsize=64)
def _jitted_init(network: Network):
    return jax.jit(network.init)


def create_train_state(objective: Objective, key: jax.Array, *, learning_rate: float = 1e-3,
                       tx: optax.GradientTransformation | None = None) -> TrainState:
    """Params and model state from `key` paired with `tx` (default: Adam(`learning_rate`), PyTorch's betas and
    eps; `kdjax.optimizers.make_optimizer` builds the others).

    One compiled program per (objective, tx): run op by op, every parameter's draw and optimiser slot would be
    compiled on its own (the values are the same either way).
    """
    return _jitted_create(objective, optax.adam(learning_rate) if tx is None else tx)(key)


@functools.lru_cache(maxsize=32)
def _jitted_create(objective: Objective, tx: optax.GradientTransformation):
    def create(key: jax.Array) -> TrainState:
        params, model_state = init_params(objective, key)
        state = TrainState.create(apply_fn=None, params=params, tx=tx, model_state=model_state)
        return state.replace(step=jnp.zeros((), jnp.int32))  # a concrete int32: the first jitted call compiles once

    return jax.jit(create)


def check_batch(network: Network, batch: Batch) -> None:
    inputs, label = batch["inputs"], batch["label"]
    tokens = jnp.issubdtype(network.input_dtype, jnp.integer)
    label_shape = tuple(inputs.shape) if tokens else tuple(inputs.shape[:1])
    if tuple(inputs.shape[1:]) != network.input_shape or label.shape != label_shape:
        labels = "label [batch, time]" if tokens else "label [batch]"
        raise ValueError(f"{network.name} takes inputs [batch, {', '.join(map(str, network.input_shape))}] and "
                         f"{labels}, got {tuple(inputs.shape)} and {tuple(label.shape)}")


def objective_loss(
    params: Any, model_state: Any, batch: Batch, dropout_key: jax.Array, teacher: TeacherOutputs | None,
    hyperparameters: Mapping[str, jax.Array], *, objective: Objective, step: jax.Array | int = 0,
) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The weighted objective for one batch, its metrics and the updated model state (`step`: the optimiser
    step, for warm-ups).

    `teacher` holds the teacher's outputs for `batch["inputs"]` (None for methods without a
    loss); they are wrapped in `stop_gradient` here, however they were computed.
    """
    method, where, labelled = objective.method, batch.get("mask"), batch.get("labelled")
    if labelled is not None:  # per example; a sequence's positions inherit it
        labelled = jnp.broadcast_to(labelled.reshape(labelled.shape + (1,) * (batch["label"].ndim - 1)),
                                    batch["label"].shape)
    if objective.fused:
        return _fused_loss(params, model_state, batch, dropout_key, teacher, hyperparameters, objective=objective,
                           labelled=labelled)
    logits, outs, new_model_state = objective.student.forward(params["model"], model_state["model"], batch["inputs"],
                                                              train=True, key=dropout_key, roles=method.roles)
    new_state = {"model": new_model_state}
    student = {"logits": logits, **outs}
    if objective.adapter is not None:  # used in training only, so its own BatchNorm (if any) is always training
        adapter_state = model_state.get("adapter", {})
        student[method.adapted], new_adapter_state = objective.adapter.apply(
            {"params": params["adapter"], **adapter_state}, student[method.adapted], mutable=list(adapter_state))
        new_state["adapter"] = {**adapter_state, **new_adapter_state}
    loss, ce, aux = weighted_loss(method, student, teacher, batch["label"], hyperparameters, where=where,
                                  labelled=labelled, step=step)
    correct = logits.argmax(-1) == batch["label"]
    if where is not None:
        correct = jnp.logical_and(correct, where)
    metrics = {"loss": loss, "ce_loss": ce, "aux_loss": aux, "correct": jnp.sum(correct)}
    return loss, (metrics, new_state)


def _fused_loss(params: Any, model_state: Any, batch: Batch, dropout_key: jax.Array, teacher: TeacherOutputs | None,
                hyperparameters: Mapping[str, jax.Array], *, objective: Objective, labelled: jax.Array | None
                ) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """`objective_loss` through the student's output head, chunk by chunk: the same values, no `[tokens, vocab]`
    logits (the teacher's neither, where it declares its head)."""
    method, student, where = objective.method, objective.student, batch.get("mask")
    head, _, new_model_state = student.head_forward(params["model"], model_state["model"], batch["inputs"],
                                                    train=True, key=dropout_key)
    teacher_side, divergence = None, None
    if method.loss is not None:
        if teacher is None:
            raise ValueError(f"method {method.name!r} needs the teacher's outputs")
        teacher_side = next(teacher[read] for read in (HEAD_READ, TOPK_READ, "logits") if read in teacher)
        divergence = method.per_position
    ce_where = where if labelled is None else labelled if where is None else jnp.logical_and(where, labelled)
    loss, sums = fused_objective(head, batch["label"], teacher=teacher_side, divergence=divergence,
                                 hyperparameters=hyperparameters if method.loss is not None else CE_ONLY,
                                 ce_where=ce_where, aux_where=where, counted=where,
                                 vocab_size=student.head.vocab_size)
    metrics = {"loss": loss, "ce_loss": sums["ce"], "aux_loss": sums["aux"],
               "correct": sums["correct"].astype(jnp.int32)}
    return loss, (metrics, {"model": new_model_state})


def weighted_loss(method: Method, student: Mapping[str, jax.Array], teacher: TeacherOutputs | None,
                  labels: jax.Array, hyperparameters: Mapping[str, jax.Array], *, where: jax.Array | None = None,
                  labelled: jax.Array | None = None, step: jax.Array | int = 0
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(`ce_weight * CE + aux_weight * method.loss`, CE, the auxiliary term); CE alone for a method without a loss.

    `student` and `teacher` hold `"logits"` and each role `method` reads; the teacher's are put under
    `stop_gradient` here. `where` (the labels' shape) masks positions out of both terms, `labelled` out of CE.
    """
    ce_where = where if labelled is None else labelled if where is None else jnp.logical_and(where, labelled)
    ce = losses.cross_entropy(student["logits"], labels, where=ce_where)
    if method.loss is None:
        return ce, ce, jnp.zeros_like(ce)
    if teacher is None:
        raise ValueError(f"method {method.name!r} needs the teacher's outputs")
    context = Context(labels, where, jnp.asarray(step, jnp.int32))
    aux = method.loss(student, jax.lax.stop_gradient(dict(teacher)), hyperparameters, context)
    return hyperparameters["ce_weight"] * ce + hyperparameters["aux_weight"] * aux, ce, aux


def train_step(
    state: TrainState, batch: Batch, key: jax.Array, teacher: TeacherOutputs | None,
    hyperparameters: Mapping[str, jax.Array], *, objective: Objective,
) -> tuple[TrainState, Metrics]:
    """One optimiser step (`state.tx`); the dropout key is `fold_in(key, state.step)`.

    Returns the new state and scalar metrics `loss`, `ce_loss`, `aux_loss`, `correct`, and
    `finite` (the loss and the updated model state are all finite).
    """
    check_batch(objective.student, batch)
    if objective.method.needs_teacher and teacher is None:
        raise ValueError(f"method {objective.method.name!r} needs the teacher's outputs")
    grad_fn = jax.value_and_grad(objective_loss, has_aux=True)
    (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch,
                                                 jax.random.fold_in(key, state.step), teacher, hyperparameters,
                                                 objective=objective, step=state.step)
    finite = jnp.isfinite(metrics["loss"])
    for leaf in jax.tree.leaves(model_state):
        finite = jnp.logical_and(finite, jnp.all(jnp.isfinite(leaf)))
    return state.apply_gradients(grads=grads).replace(model_state=model_state), metrics | {"finite": finite}


def eval_step(params: Any, model_state: Any, batch: Batch, *, network: Network) -> Metrics:
    """Inference-mode sums for one batch, so that batches add up exactly.

    `params` and `model_state` are the model's (`state.params["model"]`,
    `state.model_state["model"]`). Returns `correct` (right top-1
    predictions), `loss_sum` (summed CE, nats) and `count` (examples, or tokens, included, honouring `mask`).
    """
    check_batch(network, batch)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, bool))
    if network.head is not None:  # no [batch, time, vocab] logits
        head, _, _ = network.head_forward(params, model_state, batch["inputs"], train=False)
        _, sums = fused_objective(head, batch["label"], hyperparameters=CE_ONLY, ce_where=mask, counted=mask,
                                  vocab_size=network.head.vocab_size, reduction="sum")
        return {"correct": sums["correct"].astype(jnp.int32), "loss_sum": sums["ce"], "count": jnp.sum(mask)}
    logits, _, _ = network.forward(params, model_state, batch["inputs"], train=False)
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "correct": jnp.sum(jnp.logical_and(logits.argmax(-1) == batch["label"], mask)),
        "loss_sum": jnp.sum(jnp.where(mask, per_example, 0.0)),
        "count": jnp.sum(mask),
    }
