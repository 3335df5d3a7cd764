"""Distillation losses: pure functions of arrays, checked against their reference PyTorch code.

Conventions (all losses):

* Arrays first, options keyword-only. Shapes are checked at trace time; nothing broadcasts.
* **Logit losses** take `[..., classes]` (the class axis is `axis`, default -1): a
  classifier's `[batch, classes]` and a language model's `[batch, time, vocab]` alike.
  `where` is a boolean mask of the other axes (`[batch]`, `[batch, time]`); excluded
  positions contribute nothing to the value or the gradient. Softmaxes are computed in
  float32 whatever the input dtype (bfloat16 logits would otherwise lose several percent
  of KD at a 32k vocabulary); the result is float32.
* **Feature losses** (`cosine_loss`, `hint_loss`, `attention_transfer_loss`) take
  `[batch, ...]` and `where` of shape `[batch]`.
* `reduction="mean"` (default) averages over the included positions; `reduction="none"`
  returns the unreduced per-position values (`[...]`, zero at excluded positions), for
  callers who weight positions themselves (Optax's convention).
* **Batch-coupled losses** (`dist_loss`, `rkd_distance_loss`, `rkd_angle_loss`,
  `pkt_loss`, `similarity_preserving_loss`) compare examples with each other, so they have
  no per-example value and return a scalar. Rows outside `where` (`[batch]`) are left out
  of every pairwise statistic: the value is the loss of the batch without them. Under
  data parallelism kdjax's engine computes them on the global batch (mdistiller under DDP
  computes them per GPU).
* The losses are symmetric in what they differentiate: **stop the teacher's gradient
  yourself** (`jax.lax.stop_gradient(teacher_logits)`); kdjax's engine does.
* Where the reference code gives NaN or Inf (a saturated teacher, an all-zero row, a
  student certain of the true class), these give finite values and gradients; each
  docstring says where and why they differ.

* **Fused linear losses** (`fused_cross_entropy`, `fused_kd_loss`, `fused_generalized_jsd_loss`,
  `fused_topk_kd_loss`) take hidden states and LM heads instead of logits and never hold a
  `[tokens, vocab]` array larger than one chunk (`kdjax.losses.fused`).
* **Top-k teachers** (`topk_kd_loss`, `topk_generalized_jsd_loss`) take a teacher's `k` largest
  logits and their indices, the form an offline teacher cache stores.

Modules: `logits` (classification and sequence logits), `topk`, `fused`, `features`,
`relational`. References are named in each docstring; `tests/reference/reference_losses.py` restates
each reference formula in PyTorch for the parity tests.
"""
from kdjax.losses.features import (attention_transfer_loss, avg_pool_pairs, cosine_loss, flatten_channel_major,
                                   hint_loss)
from kdjax.losses.fused import fused_cross_entropy, fused_generalized_jsd_loss, fused_kd_loss, fused_topk_kd_loss
from kdjax.losses.logits import (cross_entropy, dist_loss, dkd_loss, generalized_jsd_loss, kd_loss, soft_cross_entropy,
                                 standardize_logits)
from kdjax.losses.relational import pkt_loss, rkd_angle_loss, rkd_distance_loss, similarity_preserving_loss
from kdjax.losses.topk import topk_generalized_jsd_loss, topk_kd_loss

__all__ = [
    "flatten_channel_major",
    "attention_transfer_loss", "avg_pool_pairs", "cosine_loss", "cross_entropy", "dist_loss", "dkd_loss",
    "fused_cross_entropy", "fused_generalized_jsd_loss", "fused_kd_loss", "fused_topk_kd_loss",
    "generalized_jsd_loss", "hint_loss", "kd_loss", "pkt_loss", "rkd_angle_loss", "rkd_distance_loss",
    "similarity_preserving_loss", "soft_cross_entropy", "standardize_logits", "topk_generalized_jsd_loss",
    "topk_kd_loss",
]
