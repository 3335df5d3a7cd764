"""Write `fused_reference.npz`: each fused case's value and gradients (student hidden states and head), float64.

    .venv/bin/pip install -e ".[reference]" && .venv/bin/python tests/reference/make_fused_reference.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

import reference_losses as ref
from fused_cases import CASES, IGNORE_INDEX, FusedCase, inputs

OUT = pathlib.Path(__file__).with_name("fused_reference.npz")


def _reference(case: FusedCase, s_in, s_w, t_in, t_w, labels) -> torch.Tensor:
    if case.reference == "liger_fused_linear_jsd":
        return ref.liger_fused_linear_jsd(s_in, s_w, t_in, t_w, labels, case.beta, case.temperature, IGNORE_INDEX)
    if case.reference == "liger_chunked_jsd":
        return ref.liger_chunked_jsd(s_in, s_w, t_in, t_w, labels, case.beta, case.temperature, case.ce_weight,
                                     case.distillation_weight)
    if case.reference == "liger_fused_linear_cross_entropy":
        return ref.liger_fused_linear_cross_entropy(s_in, s_w, labels, IGNORE_INDEX)
    if case.reference == "gkd":
        return ref.gkd(s_in @ s_w.t(), t_in @ t_w.t(), case.beta, case.temperature)
    raise ValueError(case.reference)


def main() -> None:
    arrays = {}
    for case in CASES:
        data = inputs(case)
        s_in = torch.tensor(data["student_hidden"], dtype=torch.float64, requires_grad=True)
        s_w = torch.tensor(data["student_head"].T.copy(), dtype=torch.float64, requires_grad=True)  # [V, H]
        t_in = torch.tensor(data["teacher_hidden"], dtype=torch.float64)
        t_w = torch.tensor(data["teacher_head"].T.copy(), dtype=torch.float64)
        value = _reference(case, s_in, s_w, t_in, t_w, torch.tensor(data["labels"]))
        value.backward()
        arrays[f"{case.name}/value"] = np.float64(value.item())
        arrays[f"{case.name}/student_hidden"] = s_in.grad.numpy()
        arrays[f"{case.name}/student_head"] = s_w.grad.numpy().T.copy()  # back to [H, V]
        print(f"{case.name}: {value.item():.6g}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
