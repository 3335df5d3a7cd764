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
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Score:
    """The figure a run is judged by: test accuracy for classification, bits per token for next-token data."""

    name: str  # "accuracy"
    unit: str  # appended to values: "%" or ""
    difference_unit: str  # of a difference to CE: "points" or "bits"
    digits: int
    history_key: str  # the per-epoch history's column it is computed from
    lower_is_better: bool = False
    scale: float = 1.0  # value = history column * scale
    best: bool = False  # a member's best epoch (mdistiller's convention) instead of its last (RepDistiller's)

    def of(self, result: Any) -> float:
        """A `MemberResult`'s final value (it holds the last epoch's figures under the history's names), or with
        `best` the best over its epochs."""
        if self.best and result.history:
            values = [self.at(row) for row in result.history]
            return min(values) if self.lower_is_better else max(values)
        return getattr(result, self.history_key) * self.scale

    def at(self, row: dict[str, float]) -> float:
        return row[self.history_key] * self.scale

    def text(self, value: float) -> str:
        return f"{value:.{self.digits}f}{self.unit}"


ACCURACY = Score("accuracy", "%", "points", 2, "test_accuracy")
BITS_PER_TOKEN = Score("bits per token", "", "bits", 3, "test_loss", lower_is_better=True, scale=1 / math.log(2))


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    examples: str  # what the throughput counts
    score: Score  # what a run is judged by

    def epoch_text(self, accuracy: np.ndarray, loss: np.ndarray) -> str:
        """The epoch log's test figures (over members: a value, or a range): accuracy, or bits per token and
        token accuracy."""
        def span(values: np.ndarray, digits: int, unit: str = "") -> str:
            low, high = float(np.min(values)), float(np.max(values))
            return f"{low:.{digits}f}{unit}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}{unit}"

        if self.score is BITS_PER_TOKEN:
            return f"test {span(np.asarray(loss) / np.log(2), 3)} bits/token, token accuracy {span(accuracy, 2, '%')}"
        return f"test accuracy {span(accuracy, 2, '%')}"


CLASSIFICATION = Task("classification", "images", ACCURACY)
NEXT_TOKEN = Task("next-token", "tokens", BITS_PER_TOKEN)
TASKS = {task.name: task for task in (CLASSIFICATION, NEXT_TOKEN)}


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
