"""Orbax checkpoints of a training run: state, position and the facts that make it reusable.

Each checkpoint step holds `state` (params, optimizer state, step counter and the base PRNG
key's data) and `meta` (JSON: model name, config, data fingerprint, epoch and batch
position). Orbax writes a step to a temporary directory and renames it when complete, so a
crash mid-save leaves nothing that loads as a valid step; a step that fails to restore is
reported and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.training.train_state import TrainState


class CheckpointMismatchError(RuntimeError):
    """A checkpoint exists but belongs to another model, config or data set."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` in progress and batches of it already done."""

    epoch: int
    batch: int


def _state_tree(state: TrainState, key: jax.Array) -> dict[str, Any]:
    return {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": state.step,
        "key": jax.random.key_data(key),
    }


def identity_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's identity and the one expected."""
    keys = sorted(set(saved) | set(expected))
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {expected.get(k)!r}" for k in keys
            if saved.get(k) != expected.get(k)]


class RunCheckpoints:
    """The checkpoints of one run in `directory`, tagged with `identity` (model, config, data)."""

    def __init__(self, directory: str | pathlib.Path, identity: dict[str, Any], *, max_to_keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self.identity = identity
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state: TrainState, key: jax.Array, position: Position, extra: dict[str, Any] | None = None,
             *, step: int | None = None) -> None:
        """Save `state` and `key` at `position`; `step` names the checkpoint (default `state.step`, a scalar)."""
        meta = {"identity": self.identity, "epoch": position.epoch, "batch": position.batch, **(extra or {})}
        step = int(state.step) if step is None else step
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state, key)), meta=ocp.args.JsonSave(meta)),
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, template: TrainState, key: jax.Array) -> tuple[TrainState, jax.Array, Position, dict] | None:
        """The newest step that restores cleanly, or None if there is none.

        Raises CheckpointMismatchError if that step was written by a different model,
        config or data set: resuming it would silently mix two runs.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template, key))
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as error:  # noqa: BLE001 - any failure means this step is unusable
                print(f"warning: checkpoint step {step} in {self.directory} is unreadable ({error}); "
                      "trying the previous one", file=sys.stderr)
                continue
            differences = identity_mismatch(meta.get("identity", {}), self.identity)
            if differences:
                raise CheckpointMismatchError(
                    f"checkpoint in {self.directory} belongs to a different run: " + "; ".join(differences)
                    + ". Use another --checkpoint-dir, or move that one away to start over."
                )
            try:
                tree = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
                )["state"]
                _check_finite(tree, step)
            except Exception as error:  # noqa: BLE001
                print(f"warning: checkpoint step {step} in {self.directory} is corrupt ({error}); "
                      "trying the previous one", file=sys.stderr)
                continue
            state = template.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
            restored_key = jax.random.wrap_key_data(tree["key"])
            return state, restored_key, Position(meta["epoch"], meta["batch"]), meta
        return None

    def close(self) -> None:
        self._manager.close()


def _check_finite(tree: dict[str, Any], step: int) -> None:
    for leaf in jax.tree.leaves(tree["params"]):
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf  # replicated: any shard is whole
        if not np.all(np.isfinite(np.asarray(local))):
            raise ValueError(f"non-finite parameters at step {step}")
