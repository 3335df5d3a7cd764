"""A Flax model as the engine sees it: initialise from a key, run, read named outputs.

A `Network` wraps a `flax.linen` module (`linen_network`) or an `flax.nnx` model factory
(`nnx_network`) behind two pure functions, `init(key) -> (params, state)` and
`forward(params, state, images, *, train, key, roles) -> (logits, {role: array}, state)`.
`params` are trained; `state` holds everything else the model keeps between calls
(BatchNorm's running statistics: linen's collections besides `params`, NNX's variables
besides `nnx.Param` and RNG streams), `{}` for a stateless model. In training mode the
forward pass returns the updated state; in inference mode it reads the state and returns
it unchanged. A model that updates its state in inference mode is refused when wrapped.

A language model may also declare its output head (`OutputHead`: the module whose output
is the head's input, and where the head's weights are). The engine then computes the losses
from the hidden states and the head chunk by chunk (`kdjax.losses.fused`) instead of
from `[batch, time, vocab]` logits.

A role is a name a distillation method reads (`"feature_map"`); the network maps it to a
module path of its model, read with `kdjax.features.capture`, so any model can be
distilled without editing it. The tutorial's networks and the field's CIFAR networks are in
`kdjax.zoo`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from kdjax import features as features_lib
from kdjax.losses.fused import LinearHead

Params = Any
State = Any  # {collection or variable path: array}; `{}` when the model keeps none
Apply = Callable[..., tuple[Any, dict[str, jax.Array], State]]
NOT_STATE_COLLECTIONS = ("params", "intermediates")  # linen collections that are not model state


@dataclasses.dataclass(frozen=True)
class OutputHead:
    """Where a model's linear output head is: `logits == hidden @ kernel + bias`.

    Attributes:
      hidden: module path whose output is the head's input, `[batch, time, d]` (e.g. the final LayerNorm).
      params: path of the head's parameters: a Dense / NNX Linear (`kernel` `[d, vocab]`, optional `bias`),
        or an Embed whose table the head shares (`embedding` `[vocab, d]`: a tied head, `hidden @ table.T`).
      vocab_size: the real vocabulary when the head is padded past it (columns from it on are never
        predicted); None: every column.
    """

    hidden: str
    params: str
    vocab_size: int | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A model the engine can train or distil from.

    Attributes:
      name: shown in logs and checkpoints (e.g. `"DeepNN"`).
      input_shape: one example's shape, e.g. `(32, 32, 3)`.
      roles: role name -> module path whose output that role reads.
      init: `key -> (params, state)`: the trainable parameters and the model's other state.
      apply: `(params, state, images, train, key, paths) -> (model output, {path: array}, state)`.
      logits: model output -> logits `[batch, classes]` (`[batch, time, vocab]` for a language model).
      input_dtype: what `init` and the shape probes feed: float32 images, or int32 token ids.
      head: where the output head is (`OutputHead`), or None: the losses then take the logits.
      annotations: `() -> tree like params` of the dimensions each parameter's Flax partitioning annotation
        names (`nn.with_partitioning`), which fully sharded training splits first (`kdjax.parallel.fsdp_spec`).
      sample: `(params, tokens [batch, length], prompt_length, key, temperature) -> tokens`, a language model's
        own sampler (with its key-value cache, `kdjax.sampling`), or None: on-policy methods then recompute
        the window for every token.
    """

    name: str
    input_shape: tuple[int, ...]
    roles: Mapping[str, str]
    init: Callable[[jax.Array], tuple[Params, State]]
    apply: Apply
    logits: Callable[[Any], jax.Array]
    input_dtype: Any = jnp.float32
    head: OutputHead | None = None
    annotations: Callable[[], Params] | None = None
    sample: Callable[..., jax.Array] | None = None

    def __post_init__(self) -> None:
        check_inference_keeps_state(self)
        if self.head is not None:
            check_head(self)

    def forward(self, params: Params, state: State, inputs: jax.Array, *, train: bool, key: jax.Array | None = None,
                roles: Sequence[str] = ()) -> tuple[jax.Array, dict[str, jax.Array], State]:
        """`(logits, {role: output}, state)` for `inputs` `[batch, *input_shape]` (images or token ids).

        With `train`, BatchNorm normalises by the batch's statistics and the returned state
        holds the updated running averages; `key` drives dropout. Otherwise the model runs
        on its running averages and `state` comes back as it went in.
        """
        missing = [role for role in roles if role not in self.roles]
        if missing:
            raise ValueError(f"{self.name} has no output for {missing}: give the network roles={{{missing[0]!r}: "
                             f"'<module path>'}} (it has {dict(self.roles) or 'none'})")
        paths = [self.roles[role] for role in roles]
        output, captured, new_state = self.apply(params, state, inputs, train, key, paths)
        return self.logits(output), {role: captured[self.roles[role]] for role in roles}, new_state

    def head_forward(self, params: Params, state: State, inputs: jax.Array, *, train: bool,
                     key: jax.Array | None = None, roles: Sequence[str] = ()
                     ) -> tuple[LinearHead, dict[str, jax.Array], State]:
        """As `forward`, but the head's input and weights (`LinearHead`) in place of the logits.

        The model still computes its logits, but nothing reads them, so XLA leaves them out of a
        jitted program: no `[batch, time, vocab]` array exists.
        """
        if self.head is None:
            raise ValueError(f"{self.name} declares no output head: give the network head=OutputHead(...)")
        _, outs, new_state = self.forward(params, state, inputs, train=train, key=key,
                                          roles=(*roles, HIDDEN_ROLE))
        return self.linear_head(params, outs.pop(HIDDEN_ROLE)), outs, new_state

    def linear_head(self, params: Params, hidden: jax.Array) -> LinearHead:
        """`hidden` (the output of `head.hidden`) with the head's weights out of `params`."""
        return LinearHead(hidden, *head_weights(params, self.head.params))

    def partition_dimensions(self) -> Params | None:
        """A tree like the params of the dimensions each one's Flax partitioning annotation names, or None."""
        return None if self.annotations is None else self.annotations()

    def output_shapes(self, roles: Sequence[str], batch: int = 2) -> dict[str, tuple[int, ...]]:
        """Shapes of `forward`'s logits (under `"logits"`) and `roles` for a batch of `batch`, abstractly."""
        def run(key):
            params, state = self.init(key)
            logits, outs, _ = self.forward(params, state, self.example_inputs(batch), train=False, roles=roles)
            return {"logits": logits, **outs}

        return {name: tuple(a.shape) for name, a in jax.eval_shape(run, jax.random.key(0)).items()}

    def example_inputs(self, batch: int) -> jax.Array:
        """Zeros `[batch, *input_shape]` of `input_dtype`: what initialisation and shape probes feed."""
        return jnp.zeros((batch, *self.input_shape), self.input_dtype)


HIDDEN_ROLE = "head_input"  # the role a network with an `OutputHead` maps to the head's input
HEAD_READ = "head"  # what a fused step reads from a teacher with an `OutputHead`: its `LinearHead`


def head_weights(params: Params, path: str) -> tuple[jax.Array, jax.Array | None]:
    """(kernel `[d, vocab]`, bias `[vocab]` or None) of the head whose parameters are at `path` in `params`
    (linen's dict or NNX's `nnx.State`)."""
    node = params
    for part in path.split("/"):
        try:
            node = node[int(part) if part.isdigit() and not _has_key(node, part) else part]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"no head parameters at {path!r}: {part!r} is not among "
                             f"{sorted(map(str, _keys(node)))}") from None
    names = set(map(str, _keys(node)))
    if "kernel" in names:
        return _value(node["kernel"]), _value(node["bias"]) if "bias" in names else None
    if "embedding" in names:
        return _value(node["embedding"]).T, None
    raise ValueError(f"the parameters at {path!r} ({sorted(names)}) are neither a Dense/Linear head (kernel) nor a "
                     "tied embedding (embedding)")


def _keys(node: Any) -> list:
    return list(node.keys()) if hasattr(node, "keys") else []


def _has_key(node: Any, key: str) -> bool:
    return key in map(str, _keys(node))


def _value(leaf: Any) -> jax.Array:
    return leaf.get_value() if hasattr(leaf, "get_value") else leaf


def check_head(network: Network) -> None:
    """Raise ValueError unless `network.head` reproduces its logits' shape, abstractly (no FLOPs)."""
    head = network.head

    def probe(key):
        params, state = network.init(key)
        logits, outs, _ = network.forward(params, state, network.example_inputs(2), train=False,
                                          roles=(HIDDEN_ROLE,))
        kernel, bias = head_weights(params, head.params)
        return logits, outs[HIDDEN_ROLE], kernel, bias

    try:
        logits, hidden, kernel, bias = jax.eval_shape(probe, jax.random.key(0))
    except features_lib.UnknownFeatureError as error:
        raise ValueError(f"{network.name}'s head: {error}") from None
    got = (*hidden.shape[:-1], kernel.shape[-1])
    if hidden.shape[-1] != kernel.shape[0] or got != tuple(logits.shape):
        raise ValueError(f"{network.name}'s head: {head.hidden!r} gives {tuple(hidden.shape)} and {head.params!r} a "
                         f"[{kernel.shape[0]}, {kernel.shape[1]}] kernel, which do not make its logits "
                         f"{tuple(logits.shape)}; name the module that feeds the head and the head's own parameters")
    if head.vocab_size is not None and not 1 <= head.vocab_size <= kernel.shape[1]:
        raise ValueError(f"{network.name}'s head: vocab_size must be in [1, {kernel.shape[1]}], got {head.vocab_size}")


def check_inference_keeps_state(network: Network) -> None:
    """Raise ValueError naming the state `network` writes in inference mode (abstractly: no FLOPs).

    A teacher and every evaluation run in inference mode and must read the running averages
    as they are; a model that updates them there (BatchNorm with `use_running_average=False`
    always) would be evaluated on statistics that move under it.
    """
    written = []

    def probe(key):
        params, state = network.init(key)
        before = jax.tree.leaves_with_path(state)
        values = [leaf for _, leaf in before]  # NNX shares variables with the state it merges: keep the values
        _, _, after = network.apply(params, state, network.example_inputs(2), False, None, [])
        written.extend(jax.tree_util.keystr(path) for (path, _), old, new in
                       zip(before, values, jax.tree.leaves(after)) if old is not new)

    jax.eval_shape(probe, jax.random.key(0))
    if written:
        raise ValueError(f"{network.name} updates its state {written[0]} in inference mode; the engine runs teachers "
                         "and evaluations on frozen running averages: make it read them when not training "
                         "(e.g. nn.BatchNorm(use_running_average=not train))")


def linen_network(module: nn.Module, *, input_shape: Sequence[int], roles: Mapping[str, str] | None = None,
                  logits: Callable[[Any], jax.Array] | None = None, train_argument: str | None = "train",
                  name: str | None = None, input_dtype: Any = jnp.float32, head: OutputHead | None = None) -> Network:
    """A `flax.linen` module as a `Network`.

    Args:
      module: called as `module.apply({"params": p, **state}, images, train=..., rngs={"dropout": key})`.
        Its state is every collection `init` creates besides `params` (e.g. `batch_stats`);
        in training mode those collections are mutable and their new values are returned.
      input_shape: one example's shape.
      roles: role -> submodule path (see `kdjax.features`).
      logits: picks the logits out of the module's output (default: the output itself).
      train_argument: the keyword that switches training mode (dropout, BatchNorm), or None if there is none.
      input_dtype: float32 for images, an integer type for token ids (`nn.Embed` takes no floats).
      head: where the output head is (`OutputHead`), for the fused losses.
    """
    def boxed_init(key: jax.Array) -> dict[str, Any]:
        kwargs = {train_argument: False} if train_argument else {}
        return dict(module.init(key, jnp.zeros((1, *input_shape), input_dtype), **kwargs))

    def init(key: jax.Array) -> tuple[Params, State]:
        variables = nn.meta.unbox(boxed_init(key))  # `nn.with_partitioning` boxes: see `annotations`
        state = {name: value for name, value in variables.items() if name not in NOT_STATE_COLLECTIONS}
        return variables.get("params", {}), state

    def annotations() -> Params:
        boxed = jax.eval_shape(boxed_init, jax.random.key(0)).get("params", {})
        return jax.tree.map(lambda leaf: tuple(i for i, name in enumerate(getattr(leaf, "names", ())) if name),
                            boxed, is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))

    def apply(params, state, images, train, key, paths):
        kwargs = {train_argument: train} if train_argument else {}
        if train and key is not None:
            kwargs["rngs"] = {"dropout": key}
        if not state:
            output, captured = features_lib.capture(module, {"params": params}, images, paths=paths, **kwargs)
            return output, captured, state
        (output, new_state), captured = features_lib.capture(module, {"params": params, **state}, images,
                                                             paths=paths, mutable=list(state), **kwargs)
        return output, captured, {name: new_state.get(name, value) for name, value in state.items()}

    return Network(name or type(module).__name__, tuple(input_shape), _with_head_role(roles, head), init, apply,
                   logits or (lambda output: output), input_dtype, head, annotations)


# NNX state the engine carries: every variable but the trained params, the RNG streams (rebuilt from the
# step's key) and captured intermediates.
_NNX_STATE = nnx.Not(nnx.Any(nnx.Param, nnx.RngState, nnx.Intermediate))


def nnx_network(factory: Callable[[nnx.Rngs], nnx.Module], *, input_shape: Sequence[int],
                roles: Mapping[str, str] | None = None, logits: Callable[[Any], jax.Array] | None = None,
                name: str | None = None, input_dtype: Any = jnp.float32, head: OutputHead | None = None) -> Network:
    """An `flax.nnx` model as a `Network`: `factory(nnx.Rngs(key))` builds it.

    Its `nnx.Param`s are trained; its other variables (`nnx.BatchStat`, ...) are its state,
    carried between steps; its RNG streams are rebuilt from the key on every call.
    Training mode is `model.train()` with the `dropout` stream reseeded from the step's key;
    inference is `model.eval()`.
    """
    abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    graphdef = nnx.split(abstract, nnx.Param, nnx.RngState, _NNX_STATE)[0]

    def init(key: jax.Array) -> tuple[Params, State]:
        model = factory(nnx.Rngs(key))
        return nnx.state(model, nnx.Param), nnx.state(model, _NNX_STATE)

    def apply(params, state, images, train, key, paths):
        rngs = nnx.state(factory(nnx.Rngs(0 if key is None else key)), nnx.RngState)
        model = nnx.merge(graphdef, params, rngs, state, copy=True)
        if train:
            model.train()
        else:
            model.eval()
        output, captured = features_lib.capture(model, images, paths=paths)
        return output, captured, nnx.state(model, _NNX_STATE)

    return Network(name or type(abstract).__name__, tuple(input_shape), _with_head_role(roles, head), init, apply,
                   logits or (lambda output: output), input_dtype, head)


def _with_head_role(roles: Mapping[str, str] | None, head: OutputHead | None) -> dict[str, str]:
    return dict(roles or {}) | ({HIDDEN_ROLE: head.hidden} if head is not None else {})
