"""Distillation methods as data: what each reads, its adapter, its hyperparameters, its loss.

A `Method` is one declaration. The engine (`kdjax.train`, `kdjax.loop`) runs any of them
on any pair of `kdjax.network.Network`s: it reads the declared roles from the student and
the teacher, passes the student's adapted role through the method's trainable adapter,
and minimises `ce_weight * CE + aux_weight * loss(...)` (CE alone for a method without a
loss). Hyperparameters are traced arrays, so one compiled step serves a whole grid.

Adding a method is one `register(Method(...))` call; no loop, step or CLI code changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import linen as nn

from kdjax import losses
from kdjax.models import Regressor, flatten_channel_major

Outputs = Mapping[str, jax.Array]  # "logits" and each role read, `[batch, ...]`
Hyperparameters = Mapping[str, jax.Array]
# (student outputs, teacher outputs, hyperparameters, where) -> scalar auxiliary loss
AuxLoss = Callable[[Outputs, Outputs, Hyperparameters, jax.Array | None], jax.Array]
# (student role shape, teacher role shape) -> adapter module mapping one to the other
AdapterFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]

DISTILLATION_WEIGHTS = {"ce_weight": 0.75, "aux_weight": 0.25}  # the tutorial's weighting


@dataclasses.dataclass(frozen=True)
class Method:
    """One distillation method.

    Attributes:
      name: registry key and experiment name.
      summary: one line for `--help` and reports.
      reads: roles read from both networks (`"logits"` needs no role mapping).
      loss: the auxiliary term, or None for plain cross-entropy.
      hyperparameters: name -> default; all are traced and sweepable. Methods with a loss
        also get `ce_weight` and `aux_weight`.
      adapter: builds a trainable module that maps the student's `adapted` role to the
        teacher's shape (FitNets' regressor), or None.
      adapted: the role the adapter applies to.
    """

    name: str
    summary: str
    reads: tuple[str, ...] = ()
    loss: AuxLoss | None = None
    hyperparameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    adapter: AdapterFactory | None = None
    adapted: str | None = None

    def __post_init__(self) -> None:
        if self.loss is not None:
            object.__setattr__(self, "hyperparameters", {**DISTILLATION_WEIGHTS, **self.hyperparameters})
        if (self.adapter is None) != (self.adapted is None):
            raise ValueError(f"method {self.name!r}: give both adapter and adapted, or neither")

    @property
    def needs_teacher(self) -> bool:
        return self.loss is not None

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles read from the networks' intermediates (everything but the logits)."""
        return tuple(role for role in self.reads if role != "logits")

    def resolve(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """Defaults with `overrides` applied; unknown names and invalid values are errors."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.hyperparameters)
        if unknown:
            known = ", ".join(self.hyperparameters) or "none"
            raise ValueError(f"method {self.name!r} has no hyperparameter {sorted(unknown)[0]!r} (it has: {known})")
        values = {**self.hyperparameters, **overrides}
        for name, value in values.items():
            check_hyperparameter(name, value)
        return values


def check_hyperparameter(name: str, value: float) -> None:
    """Raise ValueError unless `value` is finite and in range for `name`."""
    import math

    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if name == "temperature" and value <= 0:
        raise ValueError(f"temperature must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to `METHODS` under its name (replacing nothing: names are unique)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None


# --- the tutorial's four objectives ---------------------------------------------------------------


def _kd(student: Outputs, teacher: Outputs, hp: Hyperparameters, where: Any) -> jax.Array:
    return losses.kd_loss(student["logits"], teacher["logits"], temperature=hp["temperature"], where=where)


def _cosine(student: Outputs, teacher: Outputs, hp: Hyperparameters, where: Any) -> jax.Array:
    student_hidden = flatten_channel_major(student["feature_map"])
    teacher_hidden = losses.avg_pool_pairs(flatten_channel_major(teacher["feature_map"]))
    return losses.cosine_loss(student_hidden, teacher_hidden, where=where)


def _hint(student: Outputs, teacher: Outputs, hp: Hyperparameters, where: Any) -> jax.Array:
    return losses.hint_loss(student["feature_map"], teacher["feature_map"], where=where)


def _regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    if student_shape[1:-1] != teacher_shape[1:-1]:
        raise ValueError(f"the hint regressor keeps the spatial size: student {student_shape} and teacher "
                         f"{teacher_shape} must agree on it")
    return HintAdapter(features=teacher_shape[-1])


class HintAdapter(nn.Module):
    """`Regressor` under the scope name `LightNN(hint=True)` gives it, so that the same key initialises it the same."""

    features: int

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        return Regressor(features=self.features, name="regressor")(feature_map)


CE = register(Method("ce", "cross-entropy on the labels only"))
KD = register(Method("kd", "Hinton et al. 2015: KL divergence of temperature-softened logits, x T^2",
                     reads=("logits",), loss=_kd, hyperparameters={"temperature": 2.0}))
COSINE = register(Method("cosine", "cosine embedding of the flattened last feature maps (teacher's "
                         "average-pooled in pairs to the student's width)", reads=("feature_map",), loss=_cosine))
HINT = register(Method("hint", "FitNets (Romero et al. 2015): MSE between the teacher's last feature map and a "
                       "trainable 3x3 conv regressor of the student's", reads=("feature_map",), loss=_hint,
                       adapter=_regressor, adapted="feature_map"))
