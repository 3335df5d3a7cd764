"""The teacher's outputs for a whole split, computed once so that student steps need not run it.

Without augmentation and with the teacher in inference mode, its logits, hidden vector
and feature map are fixed per image; a student step then only gathers its batch's rows
(`kdjax.train.cached_train_step`). Kept on the device: for CIFAR-10's 50,000 training
images the logits take 2 MB, the 2048-d hidden vectors 410 MB and the 8x8x32 feature
maps 410 MB; only the fields an objective reads are computed.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp

from kdjax.data import ResidentLoader, Split
from kdjax.models import DeepNN, ModelOutput

# The field of the teacher's output each objective reads.
FIELD_FOR_OBJECTIVE = {"kd": "logits", "cosine": "hidden", "hint": "feature_map"}


def compute_teacher_cache(
    teacher_params: Any, split: Split, fields: Iterable[str], *, batch_size: int = 500
) -> ModelOutput:
    """Teacher outputs `[n, ...]` for every example of `split`, in split order; unrequested fields are None."""
    fields = set(fields)
    unknown = fields - {"logits", "hidden", "feature_map"}
    if unknown:
        raise ValueError(f"unknown teacher output fields {sorted(unknown)}")

    @jax.jit
    def forward(params, batch):
        out = DeepNN().apply({"params": params}, batch["image"], train=False)
        return {name: getattr(out, name) for name in fields}

    loader = ResidentLoader(split, batch_size, jax.random.key(0), shuffle=False)
    chunks = [forward(teacher_params, batch) for batch in loader.epoch(0)]
    n = len(split)
    stacked = {name: jnp.concatenate([chunk[name] for chunk in chunks])[:n] for name in fields}
    return ModelOutput(
        logits=stacked.get("logits"), hidden=stacked.get("hidden"), feature_map=stacked.get("feature_map")
    )
