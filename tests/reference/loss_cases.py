"""The parity cases for the distillation losses: inputs, options, and how each maps onto its reference.

Shared by `make_loss_reference.py` (which evaluates the PyTorch restatements in
`reference_losses.py`) and `tests/test_loss_parity.py` (which evaluates kdjax). Inputs are
float32 from a seeded generator; a case with a mask is compared against the reference on the
batch without the masked positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    loss: str  # kdjax.losses function
    kind: str  # logits | features | nhwc
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...] | None = None  # default: student_shape
    options: tuple[tuple[str, float], ...] = ()
    masked: bool = False
    labels: bool = False
    scale: float = 3.0
    seed: int = 0


CASES = (
    Case("cross_entropy_smoothed", "cross_entropy", "logits", (8, 10), options=(("label_smoothing", 0.1),),
         labels=True),
    Case("kd_T4", "kd_loss", "logits", (8, 10), options=(("temperature", 4.0),)),
    Case("kd_sequence_masked", "kd_loss", "logits", (3, 5, 12), options=(("temperature", 2.0),), masked=True),
    Case("lskd_T2", "lskd", "logits", (8, 10), options=(("temperature", 2.0),)),
    Case("dkd_default", "dkd_loss", "logits", (8, 10), options=(("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0)),
         labels=True),
    Case("dkd_sequence_masked", "dkd_loss", "logits", (3, 5, 12),
         options=(("alpha", 1.0), ("beta", 2.0), ("temperature", 2.0)), masked=True, labels=True, seed=1),
    Case("dist_T1", "dist_loss", "logits", (8, 10), options=(("beta", 1.0), ("gamma", 1.0), ("temperature", 1.0))),
    Case("dist_T4_masked", "dist_loss", "logits", (8, 10),
         options=(("beta", 2.0), ("gamma", 0.5), ("temperature", 4.0)), masked=True, seed=2),
    Case("dist_sequence_masked", "dist_loss", "logits", (3, 5, 12),
         options=(("beta", 1.0), ("gamma", 1.0), ("temperature", 1.0)), masked=True, seed=3),
    Case("gkd_forward", "generalized_jsd_loss", "logits", (3, 5, 12), options=(("beta", 0.0), ("temperature", 1.0)),
         masked=True, seed=4),
    Case("gkd_reverse", "generalized_jsd_loss", "logits", (3, 5, 12), options=(("beta", 1.0), ("temperature", 1.0)),
         masked=True, seed=5),
    Case("gkd_mixed", "generalized_jsd_loss", "logits", (3, 5, 12), options=(("beta", 0.5), ("temperature", 2.0)),
         masked=True, seed=6),
    Case("gkd_mixed_batch", "generalized_jsd_loss", "logits", (8, 10), options=(("beta", 0.3), ("temperature", 1.0)),
         seed=7),
    Case("at_p2", "attention_transfer_loss", "nhwc", (6, 4, 4, 5), (6, 4, 4, 7), options=(("p", 2.0),), scale=1.0),
    Case("at_p2_masked", "attention_transfer_loss", "nhwc", (6, 4, 4, 5), (6, 4, 4, 7), options=(("p", 2.0),),
         masked=True, scale=1.0, seed=8),
    Case("rkd_distance", "rkd_distance_loss", "features", (6, 12), (6, 20), scale=1.0),
    Case("rkd_distance_masked", "rkd_distance_loss", "features", (6, 3, 4), (6, 20), masked=True, scale=1.0, seed=9),
    Case("rkd_angle", "rkd_angle_loss", "features", (6, 12), (6, 20), scale=1.0),
    Case("rkd_angle_masked", "rkd_angle_loss", "features", (6, 12), (6, 20), masked=True, scale=1.0, seed=10),
    Case("rkd_angle_batch2", "rkd_angle_loss", "features", (2, 12), (2, 20), scale=1.0, seed=11),
    Case("pkt", "pkt_loss", "features", (6, 12), (6, 20), scale=1.0),
    Case("pkt_masked", "pkt_loss", "features", (6, 12), (6, 20), masked=True, scale=1.0, seed=12),
    Case("sp", "similarity_preserving_loss", "nhwc", (6, 4, 4, 5), (6, 4, 4, 7), scale=1.0),
    Case("sp_masked", "similarity_preserving_loss", "nhwc", (6, 4, 4, 5), (6, 4, 4, 7), masked=True, scale=1.0,
         seed=13),
    Case("sp_batch2", "similarity_preserving_loss", "features", (2, 12), (2, 20), scale=1.0, seed=14),
)


def inputs(case: Case) -> dict[str, np.ndarray]:
    """The case's float32 student/teacher (and int32 labels, bool mask over the leading axes)."""
    rng = np.random.default_rng(1000 + case.seed)
    teacher_shape = case.teacher_shape or case.student_shape
    out = {"student": (rng.normal(size=case.student_shape) * case.scale).astype(np.float32),
           "teacher": (rng.normal(size=teacher_shape) * case.scale).astype(np.float32)}
    positions = case.student_shape[:-1] if case.kind == "logits" else case.student_shape[:1]
    if case.labels:
        out["labels"] = rng.integers(0, case.student_shape[-1], positions).astype(np.int32)
    if case.masked:
        where = rng.random(positions) < 0.7
        where.reshape(-1)[:2] = True  # at least two included positions
        where.reshape(-1)[-1] = False  # and at least one excluded
        out["where"] = where
    return out
