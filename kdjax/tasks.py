"""What a batch is and how it is scored: image classification or next-token language modelling.

The engine serves both with one loop; the task is read off the data (`task_of`):

* **classification**: inputs `[n, height, width, channels]` uint8 pixels (or floats already
  scaled), labels `[n]`; a batch's `mask` is `[batch]`; scored by top-1 accuracy.
* **next-token**: inputs `[n, time]` integer token ids, labels `[n, time]` the next token at each
  position, optionally a `[n, time]` boolean mask of the positions that count (padding
  excluded); a batch's `mask` is `[batch, time]`; scored by token accuracy and by the mean
  cross-entropy per token in bits (bits per character for a character vocabulary). Images'
  augmentations and normalisation do not apply; the teacher runs inside the step (its
  `[n, time, vocab]` outputs are what a cache would have to hold).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    examples: str  # what the throughput counts
    score: str  # the headline metric's name
    lower_is_better: bool


CLASSIFICATION = Task("classification", "images", "test accuracy (%)", False)
NEXT_TOKEN = Task("next-token", "tokens", "bits per token", True)


def task_of(inputs: np.ndarray, labels: np.ndarray) -> Task:
    """The task whose arrays these are; ValueError naming the expected shapes if neither."""
    if inputs.ndim == 2 and np.issubdtype(inputs.dtype, np.integer):
        if labels.shape != inputs.shape or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"token inputs [n, time] need integer next-token labels of the same shape "
                             f"{inputs.shape}, got {labels.dtype} {labels.shape}")
        return NEXT_TOKEN
    if inputs.ndim != 4 or not (inputs.dtype == np.uint8 or np.issubdtype(inputs.dtype, np.floating)):
        raise ValueError(f"inputs must be images, uint8 or float [n, height, width, channels], or integer tokens "
                         f"[n, time], got {inputs.dtype} {inputs.shape} (add a channel axis to greyscale images: "
                         "images[..., None])")
    if labels.shape != inputs.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(inputs)} integers [n], got {labels.dtype} {labels.shape}")
    return CLASSIFICATION
