"""The fused linear losses' parity cases: hidden states, heads, labels and which reference each follows.

Shared by `make_fused_reference.py` (PyTorch restatements of Liger-Kernel and TRL, float64)
and `tests/test_losses_fused.py`. Heads are stored as kdjax takes them, `[d, vocab]`; the
references take the PyTorch `Linear` layout, their transpose. Ignored tokens (Liger's
`ignore_index`, TRL's `labels == -100`) are kdjax's `where == False`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class FusedCase:
    name: str
    reference: str  # a function of reference_losses.py
    beta: float = 0.5
    temperature: float = 1.0
    ce_weight: float = 0.0
    distillation_weight: float = 1.0
    ignored: bool = True  # some labels are IGNORE_INDEX
    tokens: int = 37
    vocab: int = 101
    seed: int = 0


CASES = (
    FusedCase("liger_fused_linear_jsd_mixed", "liger_fused_linear_jsd", beta=0.5, temperature=2.0),
    FusedCase("liger_fused_linear_jsd_forward_kl", "liger_fused_linear_jsd", beta=0.0, seed=1),
    FusedCase("liger_fused_linear_jsd_reverse_kl", "liger_fused_linear_jsd", beta=1.0, temperature=0.7, seed=2),
    FusedCase("liger_chunked_jsd_hard_and_soft", "liger_chunked_jsd", beta=0.3, temperature=1.5, ce_weight=0.3,
              distillation_weight=0.7, ignored=False, seed=3),
    FusedCase("liger_fused_linear_cross_entropy", "liger_fused_linear_cross_entropy", ce_weight=1.0,
              distillation_weight=0.0, seed=4),
    FusedCase("trl_gkd_mixed", "gkd", beta=0.2, temperature=1.0, ignored=False, seed=5),
)

STUDENT_HIDDEN, TEACHER_HIDDEN = 16, 24


def inputs(case: FusedCase) -> dict[str, np.ndarray]:
    """float32 hidden states and heads, int64 labels (IGNORE_INDEX where ignored), bool `where`."""
    rng = np.random.default_rng(2000 + case.seed)
    out = {"student_hidden": rng.normal(size=(case.tokens, STUDENT_HIDDEN)).astype(np.float32),
           "student_head": (rng.normal(size=(STUDENT_HIDDEN, case.vocab)) * 0.5).astype(np.float32),
           "teacher_hidden": rng.normal(size=(case.tokens, TEACHER_HIDDEN)).astype(np.float32),
           "teacher_head": (rng.normal(size=(TEACHER_HIDDEN, case.vocab)) * 0.5).astype(np.float32)}
    labels = rng.integers(0, case.vocab, case.tokens)
    where = np.ones(case.tokens, bool)
    if case.ignored:
        where = rng.random(case.tokens) < 0.75
        where[:2], where[-1] = True, False
        labels = np.where(where, labels, IGNORE_INDEX)
    out["labels"] = labels.astype(np.int64)
    out["where"] = where
    return out
