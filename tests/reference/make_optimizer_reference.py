"""Regenerate `optimizer_reference.npz`: a tiny model's parameters after 3 steps of PyTorch's SGD and Adam.

    pip install -e ".[reference]" && python tests/reference/make_optimizer_reference.py

The model is `Linear(5, 3)` on fixed inputs and targets, loss mean squared error. Each case
starts from the same weights (stored) and records the parameters after every step.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).parent / "optimizer_reference.npz"
# name -> (optimizer class, keyword arguments), PyTorch's own spelling
CASES = {
    "sgd_momentum_wd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}),
    "sgd_nesterov_wd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}),
    "sgd_plain_wd": (torch.optim.SGD, {"lr": 0.05, "weight_decay": 1e-2}),
    "adam_wd": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2}),
}


def main() -> None:
    rng = np.random.default_rng(0)
    out = {"inputs": rng.standard_normal((8, 5)).astype(np.float32),
           "targets": rng.standard_normal((8, 3)).astype(np.float32),
           "weight": rng.standard_normal((3, 5)).astype(np.float32),
           "bias": rng.standard_normal(3).astype(np.float32)}
    x, y = torch.from_numpy(out["inputs"]), torch.from_numpy(out["targets"])
    for name, (cls, kwargs) in CASES.items():
        model = torch.nn.Linear(5, 3)
        model.load_state_dict({"weight": torch.from_numpy(out["weight"]), "bias": torch.from_numpy(out["bias"])})
        optimizer = cls(model.parameters(), **kwargs)
        for step in range(3):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            out[f"{name}/{step}/weight"] = model.weight.detach().numpy().copy()
            out[f"{name}/{step}/bias"] = model.bias.detach().numpy().copy()
    np.savez(OUT, **out)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
