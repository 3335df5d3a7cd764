"""Regenerate `zoo_reference.npz`: the PyTorch zoo's outputs, features, running statistics and gradients.

    pip install -e ".[reference]" && python tests/reference/make_zoo_reference.py

For every network of `zoo_torch.NETWORKS` (100 classes), on `zoo_weights`' deterministic
float32 weights and a batch of 4 images, computed in float64 (PyTorch's float32 CPU convolutions
put up to 1 % relative error into the first layers' gradients of these random-weight networks,
more than kdjax's float32 does: the float64 pass is the better reference): eval-mode logits and role features, train-mode logits and
features, a sample of each running statistic after that train-mode pass, the mean cross-entropy of the
train-mode logits and its gradient (norm and `zoo_weights.sample` per parameter, concatenated in key order). Features
are stored NHWC as kdjax returns them, by their sum, sum of squares and a sample.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import zoo_torch  # noqa: E402
import zoo_weights  # noqa: E402

OUT = pathlib.Path(__file__).parent / "zoo_reference.npz"


def _nhwc(t: torch.Tensor) -> np.ndarray:
    array = t.detach().numpy()
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def _features(prefix: str, roles: dict, out: dict) -> None:
    for role, tensor in roles.items():
        array = _nhwc(tensor).astype(np.float64)
        out[f"{prefix}/{role}/sum"] = array.sum()
        out[f"{prefix}/{role}/sumsq"] = np.square(array).sum()
        out[f"{prefix}/{role}/sample"] = zoo_weights.sample(array.astype(np.float32))


def write(networks: dict, path: pathlib.Path) -> None:
    """The fixture of `networks` (name -> constructor taking the class count) at `path`."""
    torch.manual_seed(0)
    out = {}
    for name, make in networks.items():
        model = make(100)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in zoo_weights.state_dict(shapes).items()})
        images, labels = zoo_weights.images(name)
        model, x = model.double(), torch.from_numpy(images).double()
        out[f"{name}/keys"] = np.array(sorted(k for k in shapes if not k.endswith("num_batches_tracked")))
        out[f"{name}/parameters"] = sum(p.numel() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            logits, roles = model(x)
        out[f"{name}/eval/logits"] = logits.numpy()
        _features(f"{name}/eval", roles, out)
        model.train()
        logits, roles = model(x)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        loss.backward()
        out[f"{name}/train/logits"] = logits.detach().numpy()
        out[f"{name}/train/loss"] = loss.detach().numpy()
        _features(f"{name}/train", roles, out)
        state, grads = model.state_dict(), dict(model.named_parameters())
        stats = [k for k in sorted(state) if k.endswith(("running_mean", "running_var"))]
        out[f"{name}/stats"] = np.concatenate([zoo_weights.sample(state[k].numpy()) for k in stats])
        out[f"{name}/grad_norm"] = np.array([np.linalg.norm(grads[k].grad.numpy().astype(np.float64))
                                             for k in sorted(grads)])
        out[f"{name}/grad_sample"] = np.concatenate([zoo_weights.sample(grads[k].grad.numpy()) for k in sorted(grads)])
        print(f"{name}: {out[f'{name}/parameters']:,} parameters, eval logits |max| "
              f"{np.abs(out[f'{name}/eval/logits']).max():.3g}, loss {loss.item():.4f}")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    write(zoo_torch.NETWORKS, OUT)
