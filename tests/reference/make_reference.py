"""Write `reference.npz`: the PyTorch Knowledge Distillation Tutorial's numbers on fixed inputs.

Runs the tutorial's own classes and loss formulas (`tests/reference/tutorial_torch.py`) on CPU with the
deterministic weights and batches of `weights.py`, and records forward outputs, every
loss, the gradient of each combined objective and the parameters after `STEPS` Adam
steps. Dropout is disabled (`model.eval()`; the models have no other train/eval
difference) so the steps are deterministic.

Large tensors are stored as 256 sampled entries plus the full tensor's sum and L1
norm, which keeps the file well under 1 MB while still checking every element in bulk.

Usage (needs torch; the tests do not):  python tests/reference/make_reference.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn as nn

from tutorial_torch import (
    OBJECTIVES, ModifiedDeepNNCosine, ModifiedDeepNNRegressor, ModifiedLightNNCosine,
    ModifiedLightNNRegressor, T, ce_loss, cosine_loss, mse_loss,
)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import weights  # noqa: E402

OUTPUT = pathlib.Path(__file__).with_name("reference.npz")
SAMPLES = 256
def _load(model: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()})
    return model.eval()  # no dropout; nothing else differs between train and eval here


def _store_tensor(out: dict, key: str, array: np.ndarray, rng: np.random.Generator) -> None:
    array = np.asarray(array, dtype=np.float32)
    if array.size <= 2 * SAMPLES:
        out[f"{key}/full"] = array
        return
    out[f"{key}/idx"] = np.sort(rng.choice(array.size, SAMPLES, replace=False)).astype(np.int64)
    out[f"{key}/values"] = array.reshape(-1)[out[f"{key}/idx"]]
    out[f"{key}/sum"] = np.float64(array.astype(np.float64).sum())
    out[f"{key}/l1"] = np.float64(np.abs(array.astype(np.float64)).sum())


def main() -> None:
    torch.use_deterministic_algorithms(True)
    teacher_state = weights.teacher_state_dict()
    student_state = weights.student_state_dict()
    regressor_state = weights.regressor_state_dict()
    images, labels = weights.batches()
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {
        "fingerprint/teacher": np.array(weights.fingerprint(teacher_state)),
        "fingerprint/student": np.array(weights.fingerprint(student_state)),
        "fingerprint/regressor": np.array(weights.fingerprint(regressor_state)),
        "fingerprint/batches": np.array(weights.fingerprint({"images": images, "labels": labels})),
        "torch_version": np.array(torch.__version__),
    }

    inputs, targets = torch.from_numpy(images[0]), torch.from_numpy(labels[0])
    with torch.no_grad():
        teacher_cos = _load(ModifiedDeepNNCosine(), teacher_state)
        teacher_reg = _load(ModifiedDeepNNRegressor(), teacher_state)
        student_cos = _load(ModifiedLightNNCosine(), student_state)
        student_reg = _load(ModifiedLightNNRegressor(), student_state | regressor_state)
        teacher_logits, teacher_pooled = teacher_cos(inputs)
        _, teacher_feature_map = teacher_reg(inputs)
        student_logits, student_hidden = student_cos(inputs)
        _, regressor_output = student_reg(inputs)
        teacher_hidden = torch.flatten(teacher_cos.features(inputs), 1)
        student_feature_map = student_cos.features(inputs)
        soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
        soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
        out |= {
            "forward/teacher_logits": teacher_logits.numpy(),
            "forward/teacher_hidden": teacher_hidden.numpy(),
            "forward/teacher_pooled": teacher_pooled.numpy(),
            "forward/teacher_feature_map": teacher_feature_map.numpy(),  # NCHW
            "forward/student_logits": student_logits.numpy(),
            "forward/student_hidden": student_hidden.numpy(),
            "forward/student_feature_map": student_feature_map.numpy(),  # NCHW
            "forward/regressor_output": regressor_output.numpy(),  # NCHW
            "loss/ce": ce_loss(student_logits, targets).numpy(),
            "loss/kd": (torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * T**2).numpy(),
            # The tutorial's earlier cross-entropy form of the soft-target loss.
            "loss/kd_cross_entropy_form": (-torch.sum(soft_targets * soft_prob) / soft_prob.size()[0] * T**2).numpy(),
            "loss/cosine": cosine_loss(student_hidden, teacher_pooled, torch.ones(inputs.size(0))).numpy(),
            "loss/hint": mse_loss(regressor_output, teacher_feature_map).numpy(),
        }

    for objective, (student_cls, teacher_cls, loss_fn) in OBJECTIVES.items():
        teacher = _load(teacher_cls(), teacher_state)
        state = student_state | (regressor_state if objective == "hint" else {})
        student = _load(student_cls(), state)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        for step in range(weights.STEPS):
            optimizer.zero_grad()
            loss = loss_fn(student, teacher, torch.from_numpy(images[step]), torch.from_numpy(labels[step]))
            loss.backward()
            if step == 0:
                out[f"objective/{objective}"] = loss.detach().numpy()
                for name, param in student.named_parameters():
                    _store_tensor(out, f"grad/{objective}/{name}", param.grad.numpy(), rng)
            optimizer.step()
        for name, param in student.named_parameters():
            _store_tensor(out, f"params/{objective}/{name}", param.detach().numpy(), rng)

    np.savez_compressed(OUTPUT, **out)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e3:.0f} kB, {len(out)} arrays, torch {torch.__version__})")


if __name__ == "__main__":
    main()
