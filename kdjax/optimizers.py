"""The optimisers and learning-rate schedules members train with: the tutorial's Adam and the benchmarks' SGD.

`make_optimizer(settings, steps_per_epoch)` builds an Optax transformation from the
`kdjax.train.Settings` fields `optimizer`, `learning_rate`, `momentum`, `nesterov`,
`weight_decay`, `schedule`, `milestones`, `decay_factor`, `warmup_epochs` and `epochs`.
Schedules are functions of the optimiser step; epochs are converted with `steps_per_epoch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")


def learning_rate_schedule(learning_rate: float, *, schedule: str = "constant", epochs: int = 1,
                           steps_per_epoch: int = 1, milestones: Sequence[int] = (), decay_factor: float = 0.1,
                           warmup_epochs: float = 0.0) -> float | optax.Schedule:
    """The learning rate per optimiser step; a plain float when it never changes.

    step: `learning_rate * decay_factor ** k` after the k-th milestone epoch (PyTorch's
    `MultiStepLR` stepped once per epoch). cosine: `optax.cosine_decay_schedule` from
    `learning_rate` to 0 over `epochs` (per step, where `CosineAnnealingLR` is usually stepped
    per epoch). warmup: the rate is scaled by `min(1, (step + 1) / warmup steps)`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "step":
        main: Any = optax.piecewise_constant_schedule(
            learning_rate, {int(m) * steps_per_epoch: decay_factor for m in milestones})
    elif schedule == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    else:
        main = learning_rate
    warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps <= 0:
        return main
    base = main if callable(main) else optax.constant_schedule(main)
    return lambda step: base(step) * jnp.minimum(1.0, (step + 1) / warmup_steps)


def make_optimizer(settings: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """The Optax transformation `settings` (a `kdjax.train.Settings`) describe.

    adam: PyTorch's `Adam` (betas 0.9, 0.999, eps 1e-8). sgd: PyTorch's `SGD` with
    `momentum` (buffer `m = momentum * m + g`, step `-lr * m`, or `-lr * (g + momentum * m)`
    with Nesterov). `weight_decay` is PyTorch's coupled form for both: `weight_decay * param`
    is added to the gradient before the optimiser sees it (not AdamW's decoupled decay), on
    every parameter, BatchNorm's and biases included, as `SGD(model.parameters(), weight_decay=...)`.
    """
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.optimizer!r}")
    rate = learning_rate_schedule(settings.learning_rate, schedule=settings.schedule, epochs=settings.epochs,
                                  steps_per_epoch=steps_per_epoch, milestones=settings.milestones,
                                  decay_factor=settings.decay_factor, warmup_epochs=settings.warmup_epochs)
    if settings.optimizer == "adam":
        optimizer = optax.adam(rate)
    else:
        optimizer = optax.sgd(rate, momentum=settings.momentum or None, nesterov=settings.nesterov)
    if settings.weight_decay:
        return optax.chain(optax.add_decayed_weights(settings.weight_decay), optimizer)
    return optimizer
