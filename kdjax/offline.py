"""An offline top-k teacher: the teacher run once over a token set, its `k` largest logits per token kept on disk.

    python -m kdjax.offline --teacher-weights TEACHER_DIR --dataset tokens:tokens.npy --window 512 --k 64 \\
        --out teacher-top64
    python -m kdjax.experiments.lm --dataset tokens:tokens.npy --window 512 --teacher-topk teacher-top64 \\
        --methods ce,topk-kd --sweep top_k=8,64

MaxText's offline distillation: students then train with no teacher in the step, from the stored
top-k, renormalised over k (`kdjax.losses.topk`). It changes the loss the student sees, so only the
methods that say so read it (`topk-kd`); a smaller `top_k` reads the first entries (they are stored
in descending order). The folder holds `manifest.json` and, per chunk of windows,
`values-NNNNN.npy` (`[windows, time, k]`, bfloat16 or float16 bits as uint16) and `indices-NNNNN.npy`
(int32). The manifest names the training split it was computed for (its SHA-256): students on
other data are refused. NumPy files rather than ArrayRecord: memory-mappable, and no extra dependency.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from kdjax.atomic import whole_folder
from kdjax.data import ResidentLoader, Split
from kdjax.losses.topk import TopKLogits
from kdjax.methods import TOPK_READ
from kdjax.network import HEAD_READ
from kdjax.sampling import mask_padding
from kdjax.teacher import CachedTeacher, Teacher

MANIFEST = "manifest.json"
FORMAT = 1
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class OfflineTeacherError(ValueError):
    """A top-k folder that is missing, damaged, or written for other data."""


def topk_outputs(teacher: Teacher, batch: dict[str, jax.Array], k: int, *, chunk: int = 1024) -> TopKLogits:
    """The teacher's top-`k` logits `[batch, time, k]` for `batch["inputs"]`; through its output head one chunk of
    tokens at a time where it declares one (no `[tokens, vocab]` array), else from its logits."""
    if teacher.network.head is None:
        values, indices = jax.lax.top_k(teacher.outputs(batch, ("logits",))["logits"].astype(jnp.float32), k)
        return TopKLogits(values, indices)
    head = teacher.outputs(batch, (HEAD_READ,))[HEAD_READ]
    positions = head.hidden.shape[:-1]
    hidden = head.hidden.reshape(-1, head.hidden.shape[-1])
    pad = -hidden.shape[0] % chunk if hidden.shape[0] > chunk else 0
    pieces = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, min(chunk, hidden.shape[0]), hidden.shape[-1])
    vocab_size = teacher.network.head.vocab_size

    def piece(h):
        logits = (h @ head.kernel).astype(jnp.float32) + (0.0 if head.bias is None else head.bias)
        return jax.lax.top_k(mask_padding(logits, vocab_size), k)

    values, indices = jax.lax.map(piece, pieces)
    count = hidden.shape[0]
    return TopKLogits(values.reshape(-1, k)[:count].reshape(*positions, k),
                      indices.reshape(-1, k)[:count].reshape(*positions, k))


def write(directory: str | os.PathLike, teacher: Teacher, split: Split, *, k: int, dtype: str = "bfloat16",
          batch_size: int = 32, windows_per_file: int = 4096, description: str = "",
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run `teacher` over every window of `split` in order and store its top-`k`; returns the manifest.

    The folder appears whole or not at all (written beside, then renamed).
    """
    if dtype not in DTYPES:
        raise OfflineTeacherError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    vocab = teacher.network.output_shapes(())["logits"][-1]
    if not 1 <= k <= vocab:
        raise OfflineTeacherError(f"--k must be in [1, {vocab}] (the teacher's vocabulary), got {k}")
    directory = pathlib.Path(directory).expanduser()
    forward = jax.jit(lambda teacher, batch: topk_outputs(teacher, batch, k))
    loader = ResidentLoader(split, min(batch_size, len(split)), jax.random.key(0), shuffle=False)
    start, files, buffer, digest = time.perf_counter(), [], [], hashlib.sha256()
    with whole_folder(directory) as partial:
        def flush():
            values = np.concatenate([b.values for b in buffer]).astype(DTYPES[dtype]).view(np.uint16)
            indices = np.concatenate([b.indices for b in buffer]).astype(np.int32)
            name = f"{len(files):05d}.npy"
            digest.update(values.tobytes())
            digest.update(indices.tobytes())
            np.save(partial / f"values-{name}", values)
            np.save(partial / f"indices-{name}", indices)
            files.append({"values": f"values-{name}", "indices": f"indices-{name}", "windows": len(values)})
            buffer.clear()

        done = 0
        for batch in loader.epoch(0):
            out = jax.device_get(forward(teacher, batch))
            rows = min(len(out.values), len(split) - done)
            buffer.append(TopKLogits(out.values[:rows], out.indices[:rows]))
            done += rows
            if sum(len(b.values) for b in buffer) >= windows_per_file:
                flush()
        if buffer:
            flush()
        seconds = time.perf_counter() - start
        tokens = int(np.prod(split.labels.shape))
        stored = sum((partial / f[kind]).stat().st_size for f in files for kind in ("values", "indices"))
        manifest = {"format": FORMAT, "k": k, "dtype": dtype, "windows": len(split), "time": split.inputs.shape[1],
                    "vocab_size": int(vocab), "split_sha256": split.fingerprint(), "teacher": description,
                    "sha256": digest.hexdigest(), "files": files, "bytes": stored,
                    "bytes_per_token": stored / tokens, "seconds": seconds}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"offline teacher: top-{k} of {tokens:,} tokens in {seconds:.1f} s, {stored:,} bytes "
        f"({manifest['bytes_per_token']:.1f} per token) in {directory}")
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = pathlib.Path(directory).expanduser() / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise OfflineTeacherError(f"{path.parent} holds no {MANIFEST}: write it with python -m kdjax.offline") from None
    except json.JSONDecodeError as error:
        raise OfflineTeacherError(f"{path}: not a top-k manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise OfflineTeacherError(f"{path}: format {manifest.get('format')!r}, this kdjax reads {FORMAT}")
    return manifest


def read(directory: str | os.PathLike, split: Split) -> tuple[CachedTeacher, dict[str, Any]]:
    """The stored top-k for `split` as a teacher (`CachedTeacher` of `TOPK_READ`), and its manifest.

    Raises:
      OfflineTeacherError: the folder is not one, or was written for another split (other windows or tokens).
    """
    directory = pathlib.Path(directory).expanduser()
    manifest = read_manifest(directory)
    if manifest["split_sha256"] != split.fingerprint():
        raise OfflineTeacherError(
            f"{directory} was written for another training split ({manifest['windows']:,} windows of "
            f"{manifest['time']}; these data have {len(split):,} of {split.inputs.shape[1]}): write it again with "
            "the students' --dataset, --window and sizes")
    values, indices = [], []
    for entry in manifest["files"]:
        try:
            values.append(np.load(directory / entry["values"], mmap_mode="r").view(DTYPES[manifest["dtype"]]))
            indices.append(np.load(directory / entry["indices"], mmap_mode="r"))
        except (OSError, ValueError) as error:
            raise OfflineTeacherError(f"{directory}: {entry['values']} or {entry['indices']} is unreadable "
                                      f"({error}); write the folder again") from None
    table = TopKLogits(jnp.asarray(np.concatenate(values)), jnp.asarray(np.concatenate(indices)))
    if table.values.shape != (len(split), split.inputs.shape[1], manifest["k"]) or table.indices.shape != \
            table.values.shape:
        raise OfflineTeacherError(f"{directory}: its files hold {table.values.shape}, the manifest says "
                                  f"{(len(split), split.inputs.shape[1], manifest['k'])}; write it again")
    return CachedTeacher({TOPK_READ: table}), manifest


def main(argv: list[str] | None = None) -> int:
    from kdjax import run
    from kdjax.config import ConfigError, ExperimentConfig
    from kdjax.data import DataNotFoundError
    from kdjax.engine import model_variables
    from kdjax.released import load_teacher

    parser = argparse.ArgumentParser(prog="python -m kdjax.offline", description=(
        "Run a trained teacher once over a token set's training windows and store its top-k logits per token "
        "for --teacher-topk."))
    parser.add_argument("--teacher-weights", required=True, help="a Hugging Face checkpoint folder, or a state_dict "
                        "(.npz/.pth) of --teacher")
    parser.add_argument("--teacher", default="causal_conv_128x5", help="the zoo network of a state_dict teacher")
    parser.add_argument("--dataset", required=True, help="tokens:PATH, text:PATH or bytes:PATH, as the students'")
    parser.add_argument("--window", type=int, default=128, help="tokens per window, as the students'")
    parser.add_argument("--train-size", type=int, default=None, help="only the first N windows, as the students'")
    parser.add_argument("--k", type=int, default=64, help="logits kept per token")
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES), help="how the values are stored")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per teacher forward")
    parser.add_argument("--out", required=True, help="the folder to write")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).expanduser().resolve()  # the config's folders: nothing is written there
    try:
        config = ExperimentConfig.from_flat(name="lm", methods=("kd",), dataset=args.dataset, window=args.window,
                                            train_size=args.train_size, batch_size=args.batch_size, teacher=args.teacher,
                                            checkpoint_dir=str(out.parent), output_dir=str(out.parent),
                                            teacher_weights=args.teacher_weights).validate()
        config, data = run.prepare_data(config, run.load(config), run.log)
        if not data.train.task.name == "next-token":
            raise ConfigError(f"--dataset {args.dataset}: an offline top-k teacher stores next-token logits")
        teacher = run.teacher_network(config, data)
        _, states = load_teacher(config, data, run.log, teacher)
        write(out, Teacher(teacher, *model_variables(states)), data.train, k=args.k, dtype=args.dtype,
              batch_size=args.batch_size, description=f"{teacher.name} from {args.teacher_weights}", log=run.log)
    except (ConfigError, DataNotFoundError, OfflineTeacherError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
