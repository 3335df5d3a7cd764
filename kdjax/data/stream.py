"""Streamed batches: a split read on the host by grain, batch by batch, for data larger than the device.

The resident path (`kdjax.data.pipeline`) keeps a whole split on the device. `StreamingLoader`
keeps none of it there: for every batch it reads the examples its epoch order names (the same
`epoch_order(key, epoch)` as the resident path, so a streamed member trains on exactly the
batches a resident one does), from arrays (memory-mapped files included) in reader threads, or
from images (`kdjax.data.images.HostImages`: files, tfds records) decoded and cropped in grain
worker processes. Each process reads only the rows its devices hold and the batch becomes one global
array split over the mesh's `"batch"` axis.

A streamed batch holds one set of rows per stream (a seed's order; members with one seed share
it): `{"inputs": [streams, batch, ...], "labels": [streams, batch(, time)], "index": [streams,
batch] int32, "present": [streams, batch] bool[, "mask": [streams, batch, time]]}`; `present`
is False for the padding of an epoch's last batch and for a skipped unreadable image.
`pipeline.finish_batch` turns one stream's rows into the engine's batch.

A loader's position is (epoch, batch), which the engine's checkpoints hold: resuming rebuilds
the pipeline at that batch, and every draw is a function of (key, epoch, position in the
epoch), never of the worker or process that made it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdjax.data.formats import Split
from kdjax.data.images import ImageFileError
from kdjax.data.reading import ONLY_STREAMED, BatchReader, host_decoded
from kdjax.data.pipeline import epoch_order, num_batches
from kdjax.parallel import BATCH_AXIS

LOADERS = ("auto", "resident", "streaming")  # `Settings.data_loader`

RESIDENT_FRACTION = 0.5  # auto: resident when the split takes at most this share of the device's free memory


def split_bytes(split: Split) -> int:
    """Bytes the split's arrays take on the device (an image file counts as its decoded view)."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
               for a in (split.inputs, split.labels, split.mask) if a is not None)


def choose_loader(split: Split, asked: str, capacity_bytes: int) -> tuple[str, str]:
    """`("resident" | "streaming", why)` for training on `split` with `asked` (one of `LOADERS`)."""
    if asked not in LOADERS:
        raise ValueError(f"data loader must be one of {', '.join(LOADERS)}, got {asked!r}")
    size = split_bytes(split)
    if host_decoded(split):
        if asked == "resident":
            raise ValueError(ONLY_STREAMED)
        return "streaming", "images are decoded on the host"
    if asked != "auto":
        return asked, "asked for"
    if size <= RESIDENT_FRACTION * capacity_bytes:
        return "resident", (f"the split's {size / 2**20:,.0f} MiB fit in {RESIDENT_FRACTION:.0%} of the device's "
                            f"{capacity_bytes / 2**20:,.0f} MiB free")
    return "streaming", (f"the split's {size / 2**30:,.1f} GiB exceed {RESIDENT_FRACTION:.0%} of the device's "
                         f"{capacity_bytes / 2**30:,.1f} GiB free")


def stream_sharding(mesh: Mesh) -> NamedSharding:
    """`[streams, batch, ...]` with the batch axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows of every batch this process's devices hold (contiguous: the mesh is in process order)."""
    indices = stream_sharding(mesh).addressable_devices_indices_map((1, batch_size))
    starts = sorted({(i[1].start or 0, i[1].stop or batch_size) for i in indices.values()})
    return slice(starts[0][0], starts[-1][1])


def _stream_seeds(keys: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(keys)).reshape(len(keys), -1)[:, -2:].astype(np.uint32)


def _absl_flags_readable() -> None:
    """grain <= 0.2.18 reads an Abseil flag when it starts workers, which raises in a program that never parsed its
    flags (google/grain#1355); such a program has only the flags' defaults, which this makes readable."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class StreamingLoader:
    """Batches of `split` read on the host by grain and placed on `mesh`, one set of rows per key of `keys`.

    `keys` `[streams]`: each stream's data key, which draws its epoch order (as the resident
    path does) and its host-side crops. `workers`: grain worker processes that decode image files
    (0: read in the main process; arrays are always read there, by threads). `prefetch`: batches
    read ahead.
    """

    def __init__(self, split: Split, batch_size: int, keys: jax.Array, *, shuffle: bool = True,
                 mesh: Mesh | None = None, workers: int | None = None, prefetch: int = 4):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split, self.batch_size, self.keys, self.shuffle = split, batch_size, keys, shuffle
        self.mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()[:1]), (BATCH_AXIS,))
        self.sharding = stream_sharding(self.mesh)
        self.rows = process_rows(batch_size, self.mesh)
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.prefetch = prefetch
        self.skipped = 0
        self._orders = jax.jit(jax.vmap(lambda key, epoch: epoch_order(key, epoch, len(split), batch_size, shuffle),
                                        in_axes=(0, None)))

    def __len__(self) -> int:
        """Batches per epoch, the last one padded."""
        return num_batches(len(self.split), self.batch_size)

    def host_batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of the batches of `epoch` from batch `start` on, as NumPy arrays."""
        try:
            import grain
        except ImportError:
            raise ImportError("streamed data are read by grain: pip install 'kdjax[stream]'") from None

        reader = BatchReader(self.split, np.asarray(self._orders(self.keys, epoch)), _stream_seeds(self.keys),
                             epoch, self.batch_size, self.rows)
        batches = grain.MapDataset.range(start, len(self)).map(reader)
        if self.workers and host_decoded(self.split):
            _absl_flags_readable()
            iterable = batches.to_iter_dataset().mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=self.prefetch))
        else:
            threads = max(1, min(self.workers, 4)) if self.workers else 1
            iterable = batches.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                                 prefetch_buffer_size=self.prefetch))
        try:
            yield from iterable
        except ImageFileError as error:  # grain appends a note on its traceback filtering: keep the one line
            raise ImageFileError(str(error).split("\n", 1)[0]) from None

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """The batches of `epoch` from batch `start` on: global arrays `[streams, batch, ...]` on the mesh.

        `skipped` counts the unreadable images this process has read as absent since the call.
        """
        streams, self.skipped = len(self.keys), 0
        for number, local in enumerate(self.host_batches(epoch, start), start):
            positions = np.arange(number * self.batch_size, (number + 1) * self.batch_size)[self.rows]
            self.skipped += int((positions < len(self.split)).sum() * streams - local["present"].sum())
            yield {name: jax.make_array_from_process_local_data(
                self.sharding, value, (streams, self.batch_size, *value.shape[2:])) for name, value in local.items()}
