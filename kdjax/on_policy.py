"""On-policy distillation (GKD, Agarwal et al. 2024, as TRL's `GKDTrainer` runs it): with probability λ a batch's
continuations come from the student itself, and the teacher scores them.

A method with `sampling` (a `Sampling`) gets each of its batches through `on_policy_batch` inside the
step: a Bernoulli(λ) draw per batch and member decides; on "yes" every window keeps its first
`prompt_length` tokens and the rest is drawn from the student (at `sample_temperature`, through the
network's key-value cache where it has one, `Network.sample`). Such a batch carries the divergence on
the completion's positions only (prompt tokens carry no distillation loss) and no cross-entropy (its
tokens are the student's own, not data). On "no" the batch is the data's, exactly as the off-policy
method sees it, so λ = 0 is that method. The draws are a function of the member's data key, the epoch
and the batch: deterministic, and shared by members of one seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from kdjax.network import Network
from kdjax.sampling import mask_padding, sample_by_recompute

Batch = Mapping[str, jax.Array]
_SAMPLING_STREAM = 0x6f6e  # folded into the data key: a stream of its own, apart from augmentation's


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How an on-policy method draws: the prompt is the first `prompt_fraction` of each window (at least one
    token, at most all but one), the rest is sampled. Traced hyperparameters `lmbda` (the probability of a
    sampled batch) and `sample_temperature` go with it."""

    prompt_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.prompt_fraction < 1.0:
            raise ValueError(f"prompt_fraction must be in (0, 1), got {self.prompt_fraction}")

    def prompt_length(self, window: int) -> int:
        """Prompt tokens of a window of `window` inputs (the sequence is `window + 1` tokens)."""
        return min(max(1, round(self.prompt_fraction * (window + 1))), window)


def sampling_key(data_key: jax.Array, epoch: jax.Array | int, index: jax.Array | int) -> jax.Array:
    """The key of (member's data key, epoch, batch): the same for members of one seed."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(data_key, _SAMPLING_STREAM), epoch), index)


def sample_windows(network: Network, params: Any, state: Any, tokens: jax.Array, prompt_length: int,
                   key: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """`tokens` `[batch, window + 1]` completed after `prompt_length` by `network` in inference mode."""
    if network.sample is not None:
        return network.sample(params, tokens, prompt_length, key, temperature)

    def forward(inputs):
        logits = network.forward(params, state, inputs, train=False)[0]
        return mask_padding(logits, network.head.vocab_size if network.head is not None else None)

    return sample_by_recompute(forward, tokens, prompt_length, key, temperature)


def on_policy_batch(network: Network, sampling: Sampling, params: Any, state: Any, batch: Batch, key: jax.Array,
                    hyperparameters: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """`batch` (`inputs`, `label` `[batch, window]`, `mask`) or, with probability `lmbda`, its windows' completions
    drawn from the student; both carry `labelled` `[batch]` (False: no cross-entropy) and `mask`."""
    inputs, labels = batch["inputs"], batch["label"]
    window = inputs.shape[1]
    prompt = sampling.prompt_length(window)
    mask = batch.get("mask", jnp.ones(labels.shape, bool))
    labelled = batch.get("labelled", jnp.ones(labels.shape[:1], bool))
    choose, draw = jax.random.split(key)

    def sampled(_):
        tokens = jnp.concatenate([inputs, labels[:, -1:]], axis=1)
        tokens = sample_windows(network, params, state, tokens, prompt, draw, hyperparameters["sample_temperature"])
        completion = jnp.arange(window) >= prompt - 1  # position t predicts token t + 1
        return tokens[:, :-1], tokens[:, 1:], mask & completion[None, :], jnp.zeros_like(labelled)

    def data(_):
        return inputs, labels, mask, labelled

    inputs, labels, mask, labelled = jax.lax.cond(jax.random.bernoulli(choose, hyperparameters["lmbda"]), sampled,
                                                  data, None)
    return {**batch, "inputs": inputs, "label": labels, "mask": mask, "labelled": labelled}
