"""Write `losses_reference.npz`: each loss case's value and student gradient, from `reference_losses.py` in float64.

    .venv/bin/pip install -e ".[reference]" && .venv/bin/python tests/reference/make_loss_reference.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

import reference_losses as ref
from loss_cases import CASES, Case, inputs

OUT = pathlib.Path(__file__).with_name("losses_reference.npz")


def _reference(case: Case, student: torch.Tensor, teacher: torch.Tensor, labels) -> torch.Tensor:
    o = dict(case.options)
    if case.kind == "logits":  # positions flattened: the references take [positions, classes]
        student, teacher = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
        labels = None if labels is None else labels.reshape(-1)
    if case.kind == "nhwc" and case.loss == "attention_transfer_loss":
        student, teacher = student.permute(0, 3, 1, 2), teacher.permute(0, 3, 1, 2)
    return {
        "cross_entropy": lambda: ref.cross_entropy(student, labels, o["label_smoothing"]),
        "kd_loss": lambda: ref.kd(student, teacher, o["temperature"]),
        "lskd": lambda: ref.kd(ref.standardize(student), ref.standardize(teacher), o["temperature"]),
        "dkd_loss": lambda: ref.dkd(student, teacher, labels, o["alpha"], o["beta"], o["temperature"]),
        "dist_loss": lambda: ref.dist(student, teacher, o["beta"], o["gamma"], o["temperature"]),
        "generalized_jsd_loss": lambda: ref.gkd(student, teacher, o["beta"], o["temperature"]),
        "attention_transfer_loss": lambda: ref.attention_transfer(student, teacher, int(o["p"])),
        "rkd_distance_loss": lambda: ref.rkd_distance(student, teacher),
        "rkd_angle_loss": lambda: ref.rkd_angle(student, teacher),
        "pkt_loss": lambda: ref.pkt(student, teacher),
        "similarity_preserving_loss": lambda: ref.similarity_preserving(student, teacher),
    }[case.loss]()


def main() -> None:
    arrays = {}
    for case in CASES:
        data = inputs(case)
        where = data.get("where")
        pick = (lambda x: x) if where is None else (lambda x: x[where])
        student = torch.tensor(pick(data["student"]), dtype=torch.float64, requires_grad=True)
        teacher = torch.tensor(pick(data["teacher"]), dtype=torch.float64)
        labels = torch.tensor(pick(data["labels"]), dtype=torch.int64) if "labels" in data else None
        value = _reference(case, student, teacher, labels)
        value.backward()
        grad = np.zeros(data["student"].shape, np.float64)
        if where is None:
            grad[...] = student.grad.numpy()
        else:
            grad[where] = student.grad.numpy()
        arrays[f"{case.name}/value"] = np.float64(value.item())
        arrays[f"{case.name}/grad"] = grad
        print(f"{case.name}: {value.item():.6g}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
