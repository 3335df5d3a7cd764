"""Weights trained elsewhere, or to be used elsewhere: a PyTorch `state_dict` or a Hugging Face folder in, the same out."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import hf, methods, zoo
from kdjax.config import ConfigError, ExperimentConfig
from kdjax.data import Dataset
from kdjax.engine import Member, MemberResult, ProgramResult, evaluate_members, model_variables, unrolls
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

    try:
        if hf.is_checkpoint_folder(config.teacher_weights):
            variables = {"params": hf.load_pretrained(config.teacher_weights)[1]}
        elif config.teacher in zoo.TUTORIAL:
            variables = dict(convert.from_torch(read_state_dict(config.teacher_weights)))
        else:
            variables = dict(convert.zoo_from_torch(config.teacher, read_state_dict(config.teacher_weights),
                                                    num_classes=data.num_classes))
    except (ValueError, KeyError) as error:
        raise ConfigError(f"--teacher-weights {config.teacher_weights} for {teacher.name}: "
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
    log(f"teacher: {teacher.name} from {config.teacher_weights}, test accuracy {accuracy[0]:.2f}%")
    result = MemberResult(Member.of(methods.CE, config.teacher_seed), teacher.name, parameters, float(accuracy[0]),
                          float(loss[0]), 0.0, 0.0, [])
    return [result], states


def export_teacher(config: ExperimentConfig, states: Any, result: MemberResult, num_classes: int,
                   log: Callable[[str], None]) -> None:
    """Write the first teacher member's weights to `--export-weights` (see `write_weights`)."""
    path = pathlib.Path(config.export_weights).expanduser()
    log(f"teacher: seed {result.member.seed}, test accuracy {result.test_accuracy:.2f}%, "
        + write_weights(path, config.teacher, num_classes, *model_variables(states)))


def export_students(config: ExperimentConfig, name: str, num_classes: int, programs: Sequence[ProgramResult],
                    log: Callable[[str], None]) -> None:
    """Write every student member of `programs` (network `name`) under the folder `--export-weights`, one
    entry each, `METHOD-seedN` (with `-NAME=VALUE` hyperparameters where a sweep gives a method several), see
    `write_weights`."""
    folder = pathlib.Path(config.export_weights).expanduser()
    members = [result.member for program in programs for result in program.results]
    swept = {m.name for m in members if sum((o.name, o.seed) == (m.name, m.seed) for o in members) > 1}
    for program in programs:
        for index, result in enumerate(program.results):
            member = result.member
            setting = [f"{k}={v:g}" for k, v in member.hyperparameters] if member.name in swept else []
            stem = "-".join([member.name, *setting, f"seed{member.seed}"])
            path = folder / (stem if zoo.is_transformer(name) else f"{stem}.npz")
            log(f"student {member.label}: "
                + write_weights(path, name, num_classes, *model_variables(program.states, index)))


def write_weights(path: pathlib.Path, name: str, num_classes: int, params: Any, state: Any) -> str:
    """Write network `name`'s weights to `path` whole or not at all; returns what was written, for the log.

    A transformer becomes a Hugging Face folder (config.json + model.safetensors, `kdjax.hf.save_pretrained`);
    any other network an .npz of its PyTorch `state_dict` (`kdjax.convert.state_dict`).
    """
    from kdjax import convert

    if zoo.is_transformer(name):
        config = zoo.module(name, num_classes=num_classes).config
        hf.save_pretrained(path, config, params)
        return f"weights in {path} (Hugging Face {config.layout} folder: transformers' from_pretrained reads it)"
    arrays = convert.state_dict(name, {"params": params, **state})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")  # a crash leaves no half-written file under the name
    np.savez(partial, **arrays)
    partial.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"weights in {path} ({len(arrays)} arrays, {path.stat().st_size:,} bytes, SHA-256 {digest})"


def _stacked(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], tree)


