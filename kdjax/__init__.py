"""kdjax: knowledge distillation in functional JAX.

The PyTorch Knowledge Distillation Tutorial's teacher (`DeepNN`), student (`LightNN`) and
FitNets `Regressor` in Flax, its losses as pure functions (`kdjax.losses`), and pure,
jittable train/eval steps (`kdjax.train`); many students in one vmapped program
(`kdjax.sweep`) with their statistics (`kdjax.stats`).

Importing kdjax turns on faster XLA:CPU conv kernels unless JAX has already run something;
see `kdjax.xla_cpu` for what is set and how to opt out.
"""

from kdjax.xla_cpu import apply_cpu_defaults

apply_cpu_defaults()

from kdjax.losses import avg_pool_pairs, cosine_loss, cross_entropy, hint_loss, kd_loss
from kdjax.models import DeepNN, LightNN, ModelOutput, Regressor
from kdjax.train import (
    LossConfig,
    LossWeights,
    create_train_state,
    eval_step,
    make_eval_step,
    make_train_step,
    train_step,
)

__all__ = [
    "DeepNN",
    "LightNN",
    "LossConfig",
    "LossWeights",
    "ModelOutput",
    "Regressor",
    "avg_pool_pairs",
    "cosine_loss",
    "create_train_state",
    "cross_entropy",
    "eval_step",
    "hint_loss",
    "kd_loss",
    "make_eval_step",
    "make_train_step",
    "train_step",
]
