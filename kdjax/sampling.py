"""Sampling continuations from a causal language model inside a jitted step: prompts in, completed windows out.

Two samplers, one contract: `tokens` `[batch, length]` holds each prompt in its first `prompt_length`
positions (the rest is room, overwritten); position `t + 1` is drawn from the model's distribution at
position `t` (softmax of logits / `temperature`) with key `fold_in(key, t)`, for t = prompt_length - 1 ...
length - 2. The same key gives the same samples, whichever sampler draws them.

- `sample_with_cache`: a `kdjax.zoo.transformer.Transformer` with its key-value cache: the prompt in one
  pass, then one token per pass.
- `sample_by_recompute`: any causal network: the whole window again for every token (length - prompt_length
  forwards). The fallback for models without a cache, such as the zoo's causal convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from kdjax.zoo.transformer import TransformerConfig


def _draw(key: jax.Array, position: jax.Array | int, logits: jax.Array, temperature: jax.Array | float) -> jax.Array:
    return jax.random.categorical(jax.random.fold_in(key, position), logits.astype(jnp.float32) / temperature)


def sample_by_recompute(forward: Callable[[jax.Array], jax.Array], tokens: jax.Array, prompt_length: int,
                        key: jax.Array, temperature: jax.Array | float = 1.0) -> jax.Array:
    """`tokens` `[batch, length]` completed after `prompt_length` by `forward(tokens[:, :-1]) -> logits
    [batch, length - 1, vocab]` (a causal network's next-token logits)."""
    _check(tokens, prompt_length)

    def step(t, tokens):
        logits = jax.lax.dynamic_index_in_dim(forward(tokens[:, :-1]), t, axis=1, keepdims=False)
        return tokens.at[:, t + 1].set(_draw(key, t, logits, temperature).astype(tokens.dtype))

    return jax.lax.fori_loop(prompt_length - 1, tokens.shape[1] - 1, step, tokens)


def sample_with_cache(config: TransformerConfig, params: Any, tokens: jax.Array, prompt_length: int,
                      key: jax.Array, temperature: jax.Array | float = 1.0, *,
                      vocab_size: int | None = None) -> jax.Array:
    """As `sample_by_recompute`, for `Transformer(config)` with `params`, through its key-value cache
    (`vocab_size`: draw only below it, for a padded head)."""
    from kdjax.zoo.transformer import Transformer  # the zoo builds its networks' samplers from this module

    _check(tokens, prompt_length)
    model = Transformer(config, decode=True)
    cache = jax.tree.map(jnp.zeros_like, jax.eval_shape(model.init, jax.random.key(0), tokens[:, :-1])["cache"])

    def run(cache, chunk):
        logits, updated = model.apply({"params": params, "cache": cache}, chunk, mutable=["cache"])
        return mask_padding(logits[:, -1], vocab_size), updated["cache"]

    logits, cache = run(cache, tokens[:, :prompt_length])
    tokens = tokens.at[:, prompt_length].set(_draw(key, prompt_length - 1, logits, temperature).astype(tokens.dtype))

    def step(t, carry):
        tokens, cache = carry
        logits, cache = run(cache, jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1))
        return tokens.at[:, t + 1].set(_draw(key, t, logits, temperature).astype(tokens.dtype)), cache

    return jax.lax.fori_loop(prompt_length, tokens.shape[1] - 1, step, (tokens, cache))[0]


def mask_padding(logits: jax.Array, vocab_size: int | None) -> jax.Array:
    """`logits` `[..., columns]` with the columns of a padded head (from `vocab_size` on) at -inf; as they are
    when `vocab_size` is None or the whole width."""
    if vocab_size is None or vocab_size == logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)


def _check(tokens: jax.Array, prompt_length: int) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers [batch, length], got {tokens.dtype} {tokens.shape}")
    if not 1 <= prompt_length < tokens.shape[1]:
        raise ValueError(f"prompt_length must be in [1, {tokens.shape[1] - 1}] to leave room to sample, "
                         f"got {prompt_length}")
