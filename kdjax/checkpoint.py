"""Orbax checkpoints of a training program: its members' stacked states, position and identity.

Each checkpoint step holds `state` (params, the model's other state such as BatchNorm
statistics, optimizer state, step counter and the base PRNG keys' data, `[members, ...]`
per leaf) and `meta` (JSON: the program's identity, epoch and
batch position, history). Every epoch end is kept, so a finished run can be extended or
read back at any epoch; of the mid-epoch saves only the newest is kept. Orbax writes a step
to a temporary directory and renames it when complete, so a crash mid-save leaves nothing
that loads as a valid step; a step that fails to restore is moved aside (`<step>.corrupt`)
and the previous one is used, so the next save of that step writes it afresh.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax.train import TrainState


class CheckpointMismatchError(RuntimeError):
    """A checkpoint exists but belongs to another model, config or data set."""


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    """Where training stands: `epoch` in progress and batches of it already done."""

    epoch: int
    batch: int


def _state_tree(state: TrainState, key: jax.Array) -> dict[str, Any]:
    tree = {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": state.step,
        "key": jax.random.key_data(key),
    }
    if jax.tree.leaves(state.model_state):  # stateless models keep the layout written before model state existed
        tree["model_state"] = state.model_state
    return tree


def identity_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's identity and the one expected."""
    keys = sorted(set(saved) | set(expected))
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {expected.get(k)!r}" for k in keys
            if saved.get(k) != expected.get(k)]


class RunCheckpoints:
    """The checkpoints of one run in `directory`, tagged with `identity` (model, config, data)."""

    def __init__(self, directory: str | pathlib.Path, identity: dict[str, Any]):
        self.directory = pathlib.Path(directory).absolute()
        self.identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
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
        previous_mid_epoch = [s for s in self._manager.all_steps() if self._superseded(s)]
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state, key)), meta=ocp.args.JsonSave(meta)),
        )
        self._manager.wait_until_finished()
        for old in previous_mid_epoch:  # superseded by the step just written
            self._manager.delete(old)

    def _superseded(self, step: int) -> bool:
        """Whether a new save replaces `step`: a mid-epoch step, or one a killed run left half deleted."""
        try:
            return bool(self.read_meta(step)["batch"])
        except Exception:  # noqa: BLE001 - a step without readable meta cannot be restored either
            return True

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, template: TrainState, key: jax.Array, *, until_epoch: int | None = None
                       ) -> tuple[TrainState, jax.Array, Position, dict] | None:
        """The newest step at or before the end of epoch `until_epoch` that restores cleanly, or None.

        Raises CheckpointMismatchError if that step was written by a different model,
        config or data set: resuming it would silently mix two runs.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template, key))
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as error:  # noqa: BLE001 - any failure means this step is unusable
                self._move_aside(step, f"unreadable ({error})")
                continue
            if until_epoch is not None and (meta["epoch"], meta["batch"]) > (until_epoch, 0):
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
                self._move_aside(step, f"corrupt ({error})")
                continue
            state = template.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"],
                                     model_state=tree.get("model_state", template.model_state))
            restored_key = jax.random.wrap_key_data(tree["key"])
            return state, restored_key, Position(meta["epoch"], meta["batch"]), meta
        return None

    def _move_aside(self, step: int, why: str) -> None:
        """Rename an unusable step out of Orbax's view, so that the step is saved afresh when reached again."""
        aside = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        self._manager.reload()
        print(f"warning: checkpoint step {step} in {self.directory} is {why}; moved it to {aside.name} and "
              "trying the previous one", file=sys.stderr)

    def close(self) -> None:
        self._manager.close()


def saved_identity(directory: str | pathlib.Path) -> dict[str, Any] | None:
    """The identity recorded in the newest readable checkpoint step under `directory`, or None."""
    if not pathlib.Path(directory).is_dir():
        return None
    manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=("meta",))
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]["identity"]
            except Exception:  # noqa: BLE001 - an unreadable step says nothing; try the one before
                continue
        return None
    finally:
        manager.close()


def _check_finite(tree: dict[str, Any], step: int) -> None:
    for leaf in jax.tree.leaves((tree["params"], tree.get("model_state"))):
        shards = [shard.data for shard in leaf.addressable_shards] if isinstance(leaf, jax.Array) else [leaf]
        if not all(np.all(np.isfinite(np.asarray(shard))) for shard in shards):
            raise ValueError(f"non-finite parameters or model state at step {step}")
