"""The teacher's outputs for a whole split, computed once so that student steps need not run it.

Without augmentation and with the teacher in inference mode, its outputs are fixed per
image; a student step then gathers its batch's rows. Only what the chosen methods read is
computed and kept on the device: for CIFAR-10's 50,000 training images the tutorial
teacher's logits take 2 MB and its 8x8x32 feature maps 410 MB.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.data import TUTORIAL_NORMALIZATION, Normalization, ResidentLoader, Split
from kdjax.network import Network
from kdjax.train import teacher_outputs


def compute_teacher_cache(teacher: Network, variables: tuple[Any, Any], split: Split, reads: Iterable[str], *,
                          batch_size: int = 500, normalization: Normalization = TUTORIAL_NORMALIZATION
                          ) -> dict[str, jax.Array]:
    """`{"logits" or role: [n, ...]}` for every example of `split`, in split order, from the teacher's
    `(params, state)` in inference mode."""
    reads = tuple(sorted(set(reads)))

    @jax.jit
    def forward(variables, batch):
        return teacher_outputs(teacher, variables, batch["inputs"], reads)

    loader = ResidentLoader(split, batch_size, jax.random.key(0), shuffle=False, normalization=normalization)
    chunks = [forward(variables, batch) for batch in loader.epoch(0)]
    n = len(split)
    return {name: jnp.concatenate([chunk[name] for chunk in chunks])[:n] for name in reads}
