"""Teachers trained elsewhere, or to be used elsewhere: a PyTorch `state_dict` in, a `state_dict` out."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import methods, zoo
from kdjax.config import ConfigError, ExperimentConfig
from kdjax.data import Dataset
from kdjax.engine import Member, MemberResult, evaluate_members, model_variables, unrolls
from kdjax.parallel import batch_mesh
from kdjax.train import TrainState, build_objective

def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch `state_dict` from a `.pth`/`.pt` (also mdistiller's `{"model": ...}`; needs torch) or an `.npz`."""
    path = pathlib.Path(path).expanduser()
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        try:
            import torch
        except ImportError:
            raise ConfigError(f"--teacher-weights {path}: reading a .pth needs torch (pip install torch), or save "
                              "the state_dict as an .npz: np.savez(FILE, **{k: v.numpy() for k, v in "
                              "state_dict.items()})") from None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"--teacher-weights {path}: not a readable state_dict ({error})") from None
    for key in ("model", "state_dict"):  # mdistiller's and Lightning-style wrappers
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {key: value.numpy() for key, value in checkpoint.items() if hasattr(value, "numpy")}


def load_teacher(config: ExperimentConfig, data: Dataset, log: Callable[[str], None], teacher) -> tuple[list[MemberResult], Any]:
    """The `--teacher-weights` teacher: (its result on the test split, its variables stacked as one member)."""
    from kdjax import convert

    state_dict = read_state_dict(config.teacher_weights)
    try:
        if config.teacher in zoo.TUTORIAL:
            variables = dict(convert.from_torch(state_dict))
        else:
            variables = dict(convert.zoo_from_torch(config.teacher, state_dict, num_classes=data.num_classes))
    except (ValueError, KeyError) as error:
        raise ConfigError(f"--teacher-weights {config.teacher_weights} for --teacher {config.teacher}: "
                          f"{str(error).splitlines()[0]}") from None
    params = variables.pop("params")
    states = TrainState(step=jnp.zeros((1,), jnp.int32), apply_fn=None, params={"model": _stacked(params)}, tx=None,
                        opt_state=None, model_state={"model": _stacked(variables)})
    objective = build_objective(methods.CE, teacher)
    settings = config.settings(teacher=True)
    mesh = batch_mesh(settings.devices or None)
    accuracy, loss = evaluate_members(objective, states, data.test, settings.batch_size, unrolls(settings, mesh),
                                      mesh, normalization=settings.normalization)
    parameters = sum(leaf.size for leaf in jax.tree.leaves(params))
    log(f"teacher: {config.teacher} from {config.teacher_weights}, test accuracy {accuracy[0]:.2f}%")
    result = MemberResult(Member.of(methods.CE, config.teacher_seed), teacher.name, parameters, float(accuracy[0]),
                          float(loss[0]), 0.0, 0.0, [])
    return [result], states


def export_teacher(config: ExperimentConfig, states: Any, result: MemberResult, log: Callable[[str], None]) -> None:
    """Write the first teacher member's weights to `--export-weights` as its PyTorch `state_dict` (.npz)."""
    from kdjax import convert

    params, state = model_variables(states)
    path = pathlib.Path(config.export_weights).expanduser()
    arrays = convert.state_dict(config.teacher, {"params": params, **state})
    partial = path.with_name(path.name + ".partial.npz")  # a crash leaves no half-written file under the name
    np.savez(partial, **arrays)
    partial.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log(f"teacher: seed {result.member.seed}, test accuracy {result.test_accuracy:.2f}%, weights in {path} "
        f"({len(arrays)} arrays, {path.stat().st_size:,} bytes, SHA-256 {digest})")


def _stacked(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], tree)


