"""What a streaming worker runs: a batch's rows read from a split, with NumPy (and pillow for image files).

Worker processes unpickle `BatchReader`; nothing here touches a device.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.data.formats import Split
from kdjax.data.images import HostImages


ONLY_STREAMED = ("images decoded and cropped on the host as they are read, from image files or tfds records, are "
                 "streamed: --data-loader streaming or auto")


def host_decoded(split: Split) -> bool:
    """Whether `split`'s examples are images decoded (and cropped) on the host as they are read (files, or
    records of a tensorflow-datasets data set): only streaming serves them."""
    return isinstance(split.inputs, HostImages)


@dataclasses.dataclass(frozen=True, eq=False)
class BatchReader:
    """Reads this process's rows of batch `b` of one epoch for every stream (what a grain worker runs)."""

    split: Split
    orders: np.ndarray  # [streams, num_batches * batch_size] int32
    seeds: np.ndarray  # [streams, 2] uint32: each stream's key, for host-drawn crops
    epoch: int
    batch_size: int
    rows: slice

    def __call__(self, batch: int) -> dict[str, np.ndarray]:
        positions = np.arange(batch * self.batch_size, (batch + 1) * self.batch_size)[self.rows]
        indices = self.orders[:, positions]  # [streams, rows]
        present = np.broadcast_to(positions < len(self.split), indices.shape).copy()
        inputs = self.split.inputs
        if host_decoded(self.split):
            rows = []
            for stream, stream_indices in enumerate(indices):
                seeds = [(*self.seeds[stream], self.epoch, p) for p in positions]
                images, readable = inputs.read(stream_indices, seeds)
                present[stream] &= readable
                rows.append(images)
            read = np.stack(rows)
        else:
            read = _take(inputs, indices)
        out = {"inputs": read, "labels": _take(self.split.labels, indices), "index": indices, "present": present}
        if self.split.mask is not None:
            out["mask"] = _take(self.split.mask, indices)
        return out


def _take(array, indices: np.ndarray) -> np.ndarray:
    """`array[indices]` for `[streams, rows]` indices, reading a memory-mapped file in increasing order."""
    flat = indices.reshape(-1)
    order = np.argsort(flat, kind="stable")
    rows = np.empty((len(flat), *array.shape[1:]), array.dtype)
    rows[order] = array[flat[order]]
    return rows.reshape(*indices.shape, *array.shape[1:])
