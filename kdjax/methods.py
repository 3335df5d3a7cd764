"""Distillation methods as data: what each reads, its adapter, its hyperparameters, its loss.

A `Method` is one declaration. The engine (`kdjax.train`, `kdjax.engine`) runs any of them
on any pair of `kdjax.network.Network`s: it reads the declared roles from the student and
the teacher, passes the student's adapted role through the method's trainable adapter,
and minimises `ce_weight * CE + aux_weight * loss(...)` (CE alone for a method without a
loss). Hyperparameters are traced arrays, so one compiled step serves a whole grid.

Adding a method is one `register(Method(...))` call; no loop, step or CLI code changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from kdjax import losses
from kdjax.losses import flatten_channel_major
from kdjax.losses.logits import generalized_jsd_per_position, kd_per_position
from kdjax.losses.topk import topk_kd_per_position
from kdjax.on_policy import Sampling

Outputs = Mapping[str, jax.Array]  # "logits" (`[batch, classes]` or `[batch, time, vocab]`) and each role read
Hyperparameters = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a loss may need besides the two networks' outputs."""

    labels: jax.Array  # `[batch]` int32 (`[batch, time]` next tokens for a language model)
    where: jax.Array | None  # the labels' shape, bool: the positions that count (padding excluded)
    step: jax.Array  # the member's optimiser step before this update, int32 (for warm-ups)


# (student outputs, teacher outputs, hyperparameters, context) -> scalar auxiliary loss
AuxLoss = Callable[[Outputs, Outputs, Hyperparameters, Context], jax.Array]
# (student logits [n, vocab], teacher logits [n, vocab], hyperparameters) -> [n]: the auxiliary term per position
PerPosition = Callable[[jax.Array, jax.Array, Hyperparameters], jax.Array]
# (student role shape, teacher role shape) -> adapter module mapping one to the other
AdapterFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]

DISTILLATION_WEIGHTS = {"ce_weight": 0.75, "aux_weight": 0.25}  # the tutorial's weighting
TOPK_READ = "topk"  # an offline teacher's stored top-k logits (`kdjax.losses.topk.TopKLogits`), no network run


@dataclasses.dataclass(frozen=True, eq=False)  # identity: a member holds its method, and members are hashed
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
      uses_labels: whether `loss` reads the labels (DKD's target class), which rules out
        training on partly labelled data.
      title: the name reports give the student ("CE + DIST"); "CE + <name>" when left empty.
      per_position: `loss` per position from float32 logits (its where-masked mean is `loss`), for a
        method that reads only the logits (or only an offline teacher's `TopKLogits`, which it then receives). With it, a network that declares its output head trains
        through the fused losses (`kdjax.losses.fused`), never holding `[tokens, vocab]` logits.
      sampling: the method is on-policy (`kdjax.on_policy`): with probability `lmbda` (a hyperparameter it must
        have, with `sample_temperature`) a batch's continuations are drawn from the student in the step.
    """

    name: str
    summary: str
    reads: tuple[str, ...] = ()
    loss: AuxLoss | None = None
    hyperparameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    adapter: AdapterFactory | None = None
    adapted: str | None = None
    uses_labels: bool = False  # the auxiliary term reads `Context.labels` (so every row needs its label)
    title: str = ""
    per_position: PerPosition | None = None
    sampling: Sampling | None = None

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", default_title(self.name))
        if self.loss is not None:
            object.__setattr__(self, "hyperparameters", {**DISTILLATION_WEIGHTS, **self.hyperparameters})
        if (self.adapter is None) != (self.adapted is None):
            raise ValueError(f"method {self.name!r}: give both adapter and adapted, or neither")
        if self.sampling is not None and not {"lmbda", "sample_temperature"} <= set(self.hyperparameters):
            raise ValueError(f"method {self.name!r}: an on-policy method needs the hyperparameters lmbda and "
                             "sample_temperature")
        if self.per_position is not None and self.reads not in (("logits",), (TOPK_READ,)):
            raise ValueError(f"method {self.name!r}: per_position is for a loss of the logits (or the stored top-k) "
                             f"alone, but it reads {self.reads}")

    @property
    def needs_teacher(self) -> bool:
        return self.loss is not None

    @property
    def needs_teacher_network(self) -> bool:
        """Whether the teacher must be a network: every method with a loss but those that read only stored top-k
        logits (`TOPK_READ`), which an offline teacher serves."""
        return self.needs_teacher and self.reads != (TOPK_READ,)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles read from the networks' intermediates (everything but the logits and stored top-k)."""
        return tuple(role for role in self.reads if role not in ("logits", TOPK_READ))

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


def default_title(name: str) -> str:
    """The title of a method given none ("CE + name"; CE's own is "CE")."""
    return "CE" if name == "ce" else f"CE + {name}"


def any_data() -> list[Method]:
    """The registered methods that run on any data from a network teacher: all but the on-policy ones (token
    windows only) and those of stored top-k logits (an offline teacher). What `methods` compares."""
    return [m for m in METHODS.values() if m.sampling is None and (m.needs_teacher_network or not m.needs_teacher)]


def register(method: Method) -> Method:
    """Add `method` to `METHODS` under its name (replacing nothing: names are unique)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def method_of(method: Method | str) -> Method:
    """`method` itself, or the registered method named `method`."""
    return method if isinstance(method, Method) else get(method)


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}") from None


# --- the tutorial's four objectives ---------------------------------------------------------------


def _kd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.kd_loss(student["logits"], teacher["logits"], temperature=hp["temperature"], where=context.where)


def _cosine(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    student_hidden = flatten_channel_major(student["feature_map"])
    teacher_hidden = flatten_channel_major(teacher["feature_map"])
    width, teacher_width = student_hidden.shape[-1], teacher_hidden.shape[-1]
    if teacher_width % width:
        raise ValueError(f"cosine: the teacher's flattened feature map ({teacher_width}) must be a multiple of the "
                         f"student's ({width}) to be average-pooled to it")
    # Adjacent groups of teacher_width / width: the tutorial's avg_pool1d(x, 2) for its 2048 -> 1024.
    teacher_hidden = teacher_hidden.reshape(teacher_hidden.shape[0], width, -1).mean(axis=-1)
    return losses.cosine_loss(student_hidden, teacher_hidden, where=context.where)


def _hint(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.hint_loss(student["feature_map"], teacher["feature_map"], where=context.where)


def _regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    if student_shape[1:-1] != teacher_shape[1:-1]:
        raise ValueError(f"the hint regressor keeps the spatial size: student {student_shape} and teacher "
                         f"{teacher_shape} must agree on it")
    return ConvRegressor(features=teacher_shape[-1])


class ConvRegressor(nn.Module):
    """FitNets' regressor: a 3x3 conv, padding 1, `[n, h, w, c_student] -> [n, h, w, c_teacher]`, initialised as
    PyTorch's `Conv2d` (weights and bias U(+-1/sqrt(fan_in))). Its parameters sit under `regressor/regressor_0`,
    where the tutorial's `LightNN(hint=True)` keeps its own: the same key gives both the same weights."""

    features: int

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        return _TorchConv3x3(self.features, name="regressor")(feature_map)


class _TorchConv3x3(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bound = 1.0 / (9 * x.shape[-1]) ** 0.5  # PyTorch's default bias: U(+-1/sqrt(fan_in))
        return nn.Conv(self.features, (3, 3), padding=1, name="regressor_0",
                       kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                       bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                           key, shape, dtype, -bound, bound))(x)


CE = register(Method("ce", "cross-entropy on the labels only", title="CE"))
KD = register(Method("kd", "Hinton et al. 2015: KL divergence of temperature-softened logits, x T^2",
                     reads=("logits",), loss=_kd, hyperparameters={"temperature": 2.0}, title="CE + KD",
                     per_position=lambda s, t, hp: kd_per_position(s, t, hp["temperature"])))
COSINE = register(Method("cosine", "cosine embedding of the flattened last feature maps (teacher's "
                         "average-pooled in groups to the student's width: pairs in the tutorial)",
                         reads=("feature_map",), loss=_cosine))
HINT = register(Method("hint", "FitNets (Romero et al. 2015): MSE between the teacher's last feature map and a "
                       "trainable 3x3 conv regressor of the student's", reads=("feature_map",), loss=_hint,
                       adapter=_regressor, adapted="feature_map"))


# --- the method library -------------------------------------------------------------------------------
# Weights are the references' defaults (mdistiller's CIFAR-100 configs unless noted), tuned there for
# ResNets over 240 epochs; `experiments/METHODS.md` says how they fare on the tutorial's networks.


def _dkd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    # mdistiller ramps DKD in linearly over its first 20 of 240 epochs; here over `warmup_steps`.
    warmup = jnp.minimum((context.step + 1) / jnp.maximum(hp["warmup_steps"], 1.0), 1.0)
    return warmup * losses.dkd_loss(student["logits"], teacher["logits"], context.labels, alpha=hp["alpha"],
                                    beta=hp["beta"], temperature=hp["temperature"], where=context.where)


def _lskd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.kd_loss(losses.standardize_logits(student["logits"]), losses.standardize_logits(teacher["logits"]),
                          temperature=hp["temperature"], where=context.where)


def _dist(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.dist_loss(student["logits"], teacher["logits"], beta=hp["beta"], gamma=hp["gamma"],
                            temperature=hp["temperature"], where=context.where)


def _at(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.attention_transfer_loss(student["feature_map"], teacher["feature_map"], p=2, where=context.where)


def _rkd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    s, t, where = student["feature_map"], teacher["feature_map"], context.where
    return (hp["distance_weight"] * losses.rkd_distance_loss(s, t, where=where)
            + hp["angle_weight"] * losses.rkd_angle_loss(s, t, where=where))


def _pkt(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.pkt_loss(student["feature_map"], teacher["feature_map"], where=context.where)


def _sp(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.similarity_preserving_loss(student["feature_map"], teacher["feature_map"], where=context.where)


DKD = register(Method(
    "dkd", "Decoupled KD (Zhao et al. 2022): target-class and non-target-class KL, linearly warmed up",
    reads=("logits",), loss=_dkd, uses_labels=True, title="CE + DKD",
    # warmup_steps: mdistiller warms up over 1/12 of training (20 of 240 epochs); 1/12 of the tutorial's
    # 10 epochs rounds to one epoch, 391 steps of CIFAR-10 at batch 128.
    hyperparameters={"ce_weight": 1.0, "aux_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                     "warmup_steps": 391.0}))
LSKD = register(Method(
    "lskd", "KD on standardised logits (Sun et al. 2024), the authors' CIFAR-100 weight 9 and T = 2",
    reads=("logits",), loss=_lskd, title="CE + LS-KD",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 9.0, "temperature": 2.0}))
DIST = register(Method(
    "dist", "DIST (Huang et al. 2022): inter- and intra-class Pearson correlation of the softmaxes "
    "(the official CIFAR setting beta = gamma = 2, T = 4)",
    reads=("logits",), loss=_dist, title="CE + DIST",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0}))
AT = register(Method(
    "at", "attention transfer (Zagoruyko & Komodakis 2017) on the last feature maps, p = 2",
    reads=("feature_map",), loss=_at, title="CE + AT",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 1000.0}))
RKD = register(Method(
    "rkd", "relational KD (Park et al. 2019): distance and angle terms on the flattened last feature maps",
    reads=("feature_map",), loss=_rkd, title="CE + RKD",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}))
PKT = register(Method(
    "pkt", "probabilistic knowledge transfer (Passalis & Tefas 2018) on the flattened last feature maps",
    reads=("feature_map",), loss=_pkt, title="CE + PKT",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 30000.0}))
SP = register(Method(
    "sp", "similarity-preserving KD (Tung & Mori 2019) on the last feature maps",
    reads=("feature_map",), loss=_sp, title="CE + SP",
    hyperparameters={"ce_weight": 1.0, "aux_weight": 3000.0}))


def _topk_kd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    values, indices = teacher[TOPK_READ].first(hp["top_k"])
    return losses.topk_kd_loss(student["logits"], values, indices, temperature=hp["temperature"], where=context.where)


TOPK_KD = register(Method(
    "topk-kd", "KD from an offline teacher's stored top-k logits, renormalised over its k (MaxText's offline "
    "distillation); top_k <= 0 uses every stored entry, a smaller k the first k",
    reads=(TOPK_READ,), loss=_topk_kd, title="CE + top-k KD",
    per_position=lambda s, t, hp: topk_kd_per_position(s, *t.first(hp["top_k"]), hp["temperature"]),
    hyperparameters={"temperature": 2.0, "top_k": 0.0}))


def _gkd(student: Outputs, teacher: Outputs, hp: Hyperparameters, context: Context) -> jax.Array:
    return losses.generalized_jsd_loss(student["logits"], teacher["logits"], beta=hp["beta"],
                                       temperature=hp["temperature"], where=context.where)


GKD = register(Method(
    "gkd", "GKD's generalised Jensen-Shannon divergence (Agarwal et al. 2024; TRL's loss): beta = 0 forward KL, "
    "1 reverse KL, between a mixture",
    reads=("logits",), loss=_gkd, title="CE + GKD-JSD",
    per_position=lambda s, t, hp: generalized_jsd_per_position(s, t, hp["beta"], hp["temperature"]),
    # beta 0.5: TRL's default; T = 1 (TRL samples at 0.9 but computes the loss at the temperature it is given).
    hyperparameters={"ce_weight": 0.5, "aux_weight": 0.5, "beta": 0.5, "temperature": 1.0}))
GKD_ON_POLICY = register(dataclasses.replace(
    GKD, name="gkd-on-policy", title="CE + on-policy GKD", sampling=Sampling(),
    summary="GKD on the student's own continuations with probability lmbda (TRL's GKDTrainer): the second half of "
            "each window sampled at sample_temperature, scored by the teacher under the generalised JSD; lmbda = 0 "
            "is gkd",
    # lmbda 0.5 and sampling at 0.9: TRL's GKDConfig defaults.
    hyperparameters={**GKD.hyperparameters, "lmbda": 0.5, "sample_temperature": 0.9}))
