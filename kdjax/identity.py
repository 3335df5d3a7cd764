"""What a checkpoint or a run folder is keyed by: the settings and data that decide its results.

A program's checkpoints live in `<checkpoint_dir>/<kind>/<identity hash>/`; a run's outputs in
`<output_dir>/<name>-<identity hash>/`. Settings added after runs were first written enter an
identity only when they differ from their old behaviour, so earlier runs keep theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from kdjax.checkpoint import CheckpointMismatchError, RunCheckpoints, saved_identity
from kdjax.config import ExperimentConfig, flat_fields
from kdjax.data import Dataset
from kdjax.engine import Member
from kdjax.network import Network
from kdjax.train import Settings

FORMAT = 2  # checkpoint layout: params {"model", "adapter"}, stacked [members, ...]


def _member_key(member: Member) -> list:
    return [member.name, member.seed, [list(pair) for pair in member.hyperparameters]]


FINGERPRINT_CHARS = 16


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able settings, or of an array tree's bytes."""
    digest = hashlib.sha256()
    if isinstance(value, (dict, list, tuple, str)):
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    else:
        for leaf in jax.tree.leaves(value):
            digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


# The training settings that enter a program's identity only when changed (`kdjax.fields`: identity "changed").
CHANGED_TRAINING = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("identity") == "changed")


def run_identity(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that decide a run's results, as each field's declaration says (`kdjax.fields`)."""
    values, defaults = config.flat(), ExperimentConfig().flat()
    membership = {f.name: f.metadata["identity"] for f in flat_fields(ExperimentConfig)}
    return {key: value for key, value in values.items() if membership.get(key, "always") == "always"
            or (membership[key] == "changed" and value != defaults[key])}


class Checkpoints:
    """Where each program's checkpoints live: `<checkpoint_dir>/<kind>/<identity hash>/`.

    The identity is what determines the program's trajectory (networks, members, optimiser,
    data, the teacher's weights), not its length, so a finished program extends to more
    epochs and one teacher serves every student that matches it.
    """

    def __init__(self, config: ExperimentConfig, data: Dataset, *, teacher: bool, labelled: int | None = None):
        self.root = pathlib.Path(config.checkpoint_dir)
        self.restart = config.restart
        augment = config.settings(teacher=teacher).augment
        self.shared = {"format": FORMAT, "learning_rate": config.training.learning_rate,
                       "batch_size": config.training.batch_size,
                       "augment": {"none": False, "flip": True}.get(augment, augment),
                       "data": data.fingerprint}  # augment: the bool of identities written before crops existed
        if labelled:  # recorded only when set, so that identities written before the option stay valid
            self.shared["labelled"] = labelled
        if config.data.num_classes is not None:  # likewise: a stated class count sizes the network's head
            self.shared["classes"] = data.num_classes
        if data.train.inputs.dtype.kind == "f":  # float images are normalised too since this entry was added
            self.shared["float_inputs"] = True
        training, defaults = config.settings(teacher=teacher), Settings()
        for key in CHANGED_TRAINING:  # likewise: only what differs from the tutorial's Adam and Normalize
            if getattr(training, key) != getattr(defaults, key):
                self.shared[key] = getattr(training, key)
        if training.schedule == "cosine":  # the schedule's length is part of the trajectory
            self.shared["epochs"] = training.epochs

    def for_members(self, kind: str, network: Network, teacher: str | None = None):
        def make(members: Sequence[Member]) -> RunCheckpoints:
            identity = {**self._identity(network, teacher), "members": [_member_key(m) for m in members]}
            directory = self._folder(kind) / fingerprint(identity)
            if self.restart and directory.exists() and jax.process_index() == 0:
                aside = directory.with_name(f"{directory.name}.restarted-{time.strftime('%Y%m%d-%H%M%S')}")
                directory.rename(aside)
                print(f"--restart: moved {directory} to {aside.name}", flush=True)
            return RunCheckpoints(directory, identity)

        return make

    def _identity(self, network: Network, teacher: str | None) -> dict[str, Any]:
        return {**self.shared, "network": network.name, "teacher": teacher}

    def program_holding(self, kind: str, network: Network, member: Member) -> list[Member] | None:
        """The members of a saved program that trains `member` among others with these settings, if any.

        On CPU a member's trajectory is the same alone or in a program (`kdjax.engine`), so a
        teacher trained with `teacher --seeds 42,1,2` serves the students of `--teacher-seed 42`.
        """
        folder = self._folder(kind)
        expected = json.loads(json.dumps(self._identity(network, None)))
        for directory in sorted(folder.iterdir()) if folder.exists() else []:
            if "." in directory.name:  # set aside: restarted or corrupt
                continue
            identity = saved_identity(directory)
            if not identity or {k: v for k, v in identity.items() if k != "members"} != expected:
                continue
            keys = identity["members"]
            if (json.loads(json.dumps(_member_key(member))) in keys and len(keys) > 1
                    and all(key[0] == member.name for key in keys)):
                return [Member(member.method, seed, tuple((name, value) for name, value in pairs))
                        for _, seed, pairs in keys]
        return None

    def _folder(self, kind: str) -> pathlib.Path:
        folder = self.root / kind
        old = sorted(p.name for p in folder.glob("[0-9]*")  # step folders; a fingerprint may be all digits too
                     if p.is_dir() and p.name.isdigit() and len(p.name) != FINGERPRINT_CHARS) if folder.exists() else []
        if old:
            raise CheckpointMismatchError(
                f"{folder} holds checkpoints of an earlier kdjax version (steps {', '.join(old)}), which this version "
                f"cannot restore: move them away (e.g. mv {folder} {folder}-old) and rerun to train anew")
        return folder
