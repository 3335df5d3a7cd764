"""Decoder-only transformers in two layouts: token ids `[batch, time]` -> logits `[batch, time, vocab]`.

`gpt2`: learned positions, pre-LayerNorm blocks, GELU (tanh form) MLP, fused QKV projection, the head
tied to the token embedding. `llama`: rotary positions (RoPE, Llama 3's frequency scaling optional),
RMSNorm, SwiGLU MLP, grouped-query attention, an untied head (or a tied one). Module and parameter names
follow Hugging Face `transformers`' `GPT2LMHeadModel` / `LlamaForCausalLM`, so `kdjax.hf` maps
checkpoints by name. No dropout: the models are deterministic (distillation's usual setting).

Roles the methods read: `block{i}` (the residual stream after block i, `[batch, time, d]`) and
`attention{i}` (block i's attention probabilities `[batch, heads, time, time]`, computed only where read);
the final norm feeds the declared `OutputHead`, for the fused losses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from kdjax.network import OutputHead

LAYOUTS = ("gpt2", "llama")
_INIT = nn.initializers.normal(0.02)  # GPT-2's and Llama's initializer_range


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A transformer's sizes.

    Attributes:
      layout: "gpt2" or "llama".
      vocab_size: rows of the token embedding (= the head's columns).
      hidden_size: d, the residual stream's width.
      layers: blocks.
      heads: query heads; `kv_heads` key/value heads (grouped-query attention; default: `heads`).
      intermediate_size: the MLP's inner width (default: 4 d).
      max_positions: longest sequence (the learned position table's rows for gpt2).
      norm_eps: LayerNorm / RMSNorm epsilon (GPT-2 1e-5, Llama 1e-6 or 1e-5).
      head_dim: width per head (default: d / heads).
      tie_embeddings: the head shares the embedding table (default: gpt2 yes, llama no).
      rope_theta: RoPE's base; `rope_scaling`: Llama 3's `(factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings)` or None.
      attention_bias, mlp_bias: biases on Llama's projections (GPT-2's always have them).
    """

    layout: str
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int | None = None
    intermediate_size: int | None = None
    max_positions: int = 1024
    norm_eps: float = 1e-5
    head_dim: int | None = None
    tie_embeddings: bool | None = None
    rope_theta: float = 10000.0
    rope_scaling: tuple[float, float, float, int] | None = None
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown transformer layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        for name in ("vocab_size", "hidden_size", "layers", "heads", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer {name} must be >= 1, got {getattr(self, name)}")
        if self.heads % self.kv_heads_:
            raise ValueError(f"{self.heads} query heads do not split into {self.kv_heads_} key/value groups")
        if self.head_dim is None and self.hidden_size % self.heads:
            raise ValueError(f"hidden size {self.hidden_size} does not split into {self.heads} heads")
        if self.layout == "gpt2" and (self.kv_heads_ != self.heads or self.head_dim_ * self.heads != self.hidden_size
                                      or not self.tied):
            raise ValueError("the gpt2 layout has one key/value head per query head, d / heads per head and a tied "
                             "head; use the llama layout for others")
        if self.layout == "llama" and self.head_dim_ % 2:
            raise ValueError(f"rotary positions need an even head width, got {self.head_dim_}")

    @property
    def kv_heads_(self) -> int:
        return self.kv_heads or self.heads

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.heads

    @property
    def intermediate_size_(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def tied(self) -> bool:
        return self.layout == "gpt2" if self.tie_embeddings is None else self.tie_embeddings

    @property
    def names(self) -> Mapping[str, str]:
        """Module names, as `transformers` has them: blocks, attention, embedding, final norm, head."""
        if self.layout == "gpt2":
            return {"block": "h", "attention": "attn", "embed": "wte", "norm": "ln_f", "head": "wte"}
        return {"block": "layers", "attention": "self_attn", "embed": "embed_tokens", "norm": "norm",
                "head": "embed_tokens" if self.tied else "lm_head"}


class AttentionWeights(nn.Module):
    """Softmax over the keys of causally masked scores `[batch, heads, queries, keys]` (query i at position
    `offset + i`, key j at position j): a module of its own, so that the maps are a role (`attention{i}`)."""

    @nn.compact
    def __call__(self, scores: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
        queries, keys = scores.shape[-2:]
        causal = jnp.arange(keys)[None, :] <= offset + jnp.arange(queries)[:, None]
        return jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(scores.dtype).min), axis=-1)


def rotary_frequencies(config: TransformerConfig) -> np.ndarray:
    """RoPE's inverse frequencies `[head_dim / 2]` in float32, as `transformers` computes them, with Llama 3's
    scaling where the config has it."""
    dim = config.head_dim_
    inv_freq = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2).astype(np.float32) / dim))).astype(np.float32)
    if config.rope_scaling is not None:
        factor, low, high, original = config.rope_scaling
        wavelength = 2 * math.pi / inv_freq
        scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelength < original / high) & ~(wavelength > original / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rotary_tables(config: TransformerConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """RoPE's (cos, sin) `[time, head_dim]` at `positions` `[time]`, in float32 (as `transformers` has them,
    also for a float64 model)."""
    angles = positions.astype(jnp.float32)[:, None] * rotary_frequencies(config)[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """`x * cos + rotate_half(x) * sin` for `x` `[batch, time, heads, head_dim]`."""
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos[:, None] + jnp.concatenate([-second, first], axis=-1) * sin[:, None]


class Attention(nn.Module):
    """Causal self-attention; with `decode`, through a key-value cache (the `cache` collection, sized by the
    input `init` sees): each call appends its tokens at the cache's position and attends to all before."""

    config: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
        c = self.config
        batch, time, _ = x.shape
        heads, kv_heads, dim = c.heads, c.kv_heads_, c.head_dim_
        if c.layout == "gpt2":
            q, k, v = jnp.split(nn.Dense(3 * heads * dim, kernel_init=_INIT, name="c_attn")(x), 3, axis=-1)
        else:
            def projection(name: str, width: int) -> jax.Array:
                return nn.Dense(width * dim, use_bias=c.attention_bias, kernel_init=_INIT, name=name)(x)
            q, k, v = projection("q_proj", heads), projection("k_proj", kv_heads), projection("v_proj", kv_heads)
        q, k, v = (a.reshape(batch, time, -1, dim) for a in (q, k, v))
        if c.layout == "llama":
            cos, sin = (table.astype(x.dtype) for table in rotary_tables(c, offset + jnp.arange(time)))
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if self.decode:
            k, v = self._cached(k, v, offset)
        k, v = (jnp.repeat(a, heads // kv_heads, axis=2) for a in (k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(dim, x.dtype))
        weights = AttentionWeights(name="weights")(scores, offset)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, time, heads * dim)
        if c.layout == "gpt2":
            return nn.Dense(c.hidden_size, kernel_init=_INIT, name="c_proj")(out)
        return nn.Dense(c.hidden_size, use_bias=c.attention_bias, kernel_init=_INIT, name="o_proj")(out)

    def _cached(self, k: jax.Array, v: jax.Array, offset: jax.Array | int) -> tuple[jax.Array, jax.Array]:
        """The cache's keys and values `[batch, cache length, kv heads, dim]` with `k`, `v` written at `offset`."""
        initialized = self.has_variable("cache", "key")
        keys = self.variable("cache", "key", jnp.zeros, k.shape, k.dtype)
        values = self.variable("cache", "value", jnp.zeros, v.shape, v.dtype)
        if not initialized:  # `init` sizes the cache by its input
            return k, v
        keys.value = jax.lax.dynamic_update_slice_in_dim(keys.value, k, offset, axis=1)
        values.value = jax.lax.dynamic_update_slice_in_dim(values.value, v, offset, axis=1)
        return keys.value, values.value


class MLP(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        inner = c.intermediate_size_
        if c.layout == "gpt2":
            hidden = nn.gelu(nn.Dense(inner, kernel_init=_INIT, name="c_fc")(x), approximate=True)
            return nn.Dense(c.hidden_size, kernel_init=_INIT, name="c_proj")(hidden)

        def dense(name: str, width: int, inputs: jax.Array) -> jax.Array:
            return nn.Dense(width, use_bias=c.mlp_bias, kernel_init=_INIT, name=name)(inputs)
        gated = nn.silu(dense("gate_proj", inner, x)) * dense("up_proj", inner, x)
        return dense("down_proj", c.hidden_size, gated)


class Block(nn.Module):
    config: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
        c = self.config
        if c.layout == "gpt2":
            x = x + Attention(c, self.decode, name="attn")(nn.LayerNorm(c.norm_eps, name="ln_1")(x), offset)
            return x + MLP(c, name="mlp")(nn.LayerNorm(c.norm_eps, name="ln_2")(x))
        x = x + Attention(c, self.decode, name="self_attn")(nn.RMSNorm(c.norm_eps, name="input_layernorm")(x), offset)
        return x + MLP(c, name="mlp")(nn.RMSNorm(c.norm_eps, name="post_attention_layernorm")(x))


class Transformer(nn.Module):
    """A decoder-only transformer (`TransformerConfig`): token ids `[batch, time]` -> logits `[batch, time, vocab]`.

    With `decode`, each call continues the sequence held in its key-value cache (`kdjax.sampling`).
    """

    config: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c, names = self.config, self.config.names
        offset: jax.Array | int = 0
        if self.decode:
            initialized = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                offset, position.value = position.value, position.value + tokens.shape[-1]
        embed = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=_INIT, name=names["embed"])
        x = embed(tokens)
        if c.layout == "gpt2":
            x = x + nn.Embed(c.max_positions, c.hidden_size, embedding_init=_INIT, name="wpe")(
                offset + jnp.arange(tokens.shape[-1]))
        for index in range(c.layers):
            x = Block(c, self.decode, name=f"{names['block']}_{index}")(x, offset)
        norm = nn.LayerNorm if c.layout == "gpt2" else nn.RMSNorm
        x = norm(c.norm_eps, name=names["norm"])(x)
        if c.tied:
            return embed.attend(x)
        return nn.Dense(c.vocab_size, use_bias=False, kernel_init=_INIT, name="lm_head")(x)


def roles(config: TransformerConfig) -> dict[str, str]:
    """`block{i}` and `attention{i}` -> module paths (see the module docstring)."""
    block, attention = config.names["block"], config.names["attention"]
    return {**{f"block{i}": f"{block}_{i}" for i in range(config.layers)},
            **{f"attention{i}": f"{block}_{i}/{attention}/weights" for i in range(config.layers)}}


def output_head(config: TransformerConfig) -> OutputHead:
    """The final norm feeds the head: the embedding table when tied, else `lm_head`."""
    return OutputHead(hidden=config.names["norm"], params=config.names["head"])


def preset(layout: str, hidden_size: int, layers: int, *, vocab_size: int) -> TransformerConfig:
    """The zoo's sizes: heads of 32, gpt2's MLP 4 d wide, llama's 8 d / 3 (rounded up to 32) with two query heads
    per key/value head."""
    heads = max(1, hidden_size // 32)
    if layout == "gpt2":
        return TransformerConfig("gpt2", vocab_size, hidden_size, layers, heads)
    return TransformerConfig("llama", vocab_size, hidden_size, layers, heads, kv_heads=max(1, heads // 2),
                             intermediate_size=-(-8 * hidden_size // 3 // 32) * 32, norm_eps=1e-6)


def _zoo(layout: str, hidden_size: int, layers: int, num_classes: int) -> Transformer:
    return Transformer(preset(layout, hidden_size, layers, vocab_size=num_classes))


NETWORKS = {f"{layout}_{d}x{layers}": functools.partial(_zoo, layout, d, layers)
            for layout, d, layers in (("gpt2", 64, 2), ("gpt2", 128, 4), ("gpt2", 256, 6),
                                      ("llama", 64, 2), ("llama", 128, 4), ("llama", 256, 6))}
