"""From host arrays to device batches: the tutorial's normalisation, seeded epoch orders, and two loaders.

The whole split lives on the device; each epoch is a permutation drawn there from
`fold_in(key, epoch)` and batches are gathered there (`gather_batch`, which the engine
calls inside its train step; `ResidentLoader` for evaluation), so a step costs no host work
beyond passing its index.

A batch is `{"inputs": [b, 32, 32, 3] float32, "label": [b] int32, "mask": [b] bool,
"index": [b] int32}` (token windows: `inputs`, `label` and `mask` `[b, time]`, see `kdjax.tasks`),
`index` being each example's position in the split. `augment_batch` crops
(optionally) and mirrors each image at random, drawn from (key, epoch, batch). The
last batch of an epoch is padded to the full batch size and `mask` marks the real examples
(50,000 = 390 * 128 + 80, so the tutorial's last 80 images are trained on without a
second compilation); the losses give padding rows exactly zero weight.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kdjax.data.formats import Split
from kdjax.data.normalization import TUTORIAL_NORMALIZATION, Normalization, normalize
from kdjax.parallel import batch_sharding, check_batch_size, replicate

Batch = dict[str, jax.Array]
_FLIP_STREAM = 0x666C6970  # folded into the loader key so flips never reuse the permutation's keys
_CROP_STREAM = 0x63726F70


def num_batches(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def epoch_order(key: jax.Array, epoch: int, num_examples: int, batch_size: int, shuffle: bool = True) -> jax.Array:
    """Example indices for one epoch, `[num_batches * batch_size]` int32, padded with index 0.

    The permutation is `jax.random.permutation(fold_in(key, epoch), n)`: the same on every
    run and machine for the same key, different for every epoch.
    """
    if shuffle:
        order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    else:
        order = jnp.arange(num_examples)
    padding = num_batches(num_examples, batch_size) * batch_size - num_examples
    return jnp.pad(order.astype(jnp.int32), (0, padding))


@functools.partial(jax.jit, static_argnames=("batch_size", "num_examples"))
def _slice_order(order: jax.Array, index: jax.Array, *, batch_size: int, num_examples: int):
    start = index * batch_size
    indices = jax.lax.dynamic_slice(order, (start,), (batch_size,))
    mask = start + jnp.arange(batch_size) < num_examples
    return indices, mask


def gather_batch(data: dict[str, jax.Array], order, index, *, batch_size: int, num_examples: int,
                 normalization: Normalization = TUTORIAL_NORMALIZATION) -> Batch:
    """Batch `index` of epoch `order` gathered from a whole split's `Split.arrays()` (images normalised here).

    `mask` has the labels' shape: `[batch]` for images, `[batch, time]` for token windows
    (the padding rows' positions and the split's own masked positions are False).
    """
    indices, present = _slice_order(order, index, batch_size=batch_size, num_examples=num_examples)
    rows = {"inputs": data["inputs"][indices], "labels": data["labels"][indices], "index": indices,
            "present": present, **({"mask": data["mask"][indices]} if "mask" in data else {})}
    return finish_batch(rows, normalization)


def finish_batch(rows: dict[str, jax.Array], normalization: Normalization = TUTORIAL_NORMALIZATION) -> Batch:
    """The engine's batch from a batch's rows `{"inputs", "labels", "index", "present"[, "mask"]}` (as
    `gather_batch` selects them or `kdjax.data.stream` reads them): images normalised, `mask` of the labels' shape."""
    inputs, labels, present = rows["inputs"], rows["labels"], rows["present"]
    if inputs.dtype == jnp.uint8 or jnp.issubdtype(inputs.dtype, jnp.floating):  # images, not token ids
        inputs = normalize(inputs, normalization)
    mask = jnp.broadcast_to(present.reshape(present.shape + (1,) * (labels.ndim - 1)), labels.shape)
    if "mask" in rows:
        mask = jnp.logical_and(mask, rows["mask"])
    return {"inputs": inputs, "label": labels, "mask": mask, "index": rows["index"]}


@functools.lru_cache
def _batch_gatherer(batch_size: int, num_examples: int, sharding: jax.sharding.Sharding | None,
                    normalization: Normalization):
    """`gather_batch` jitted for one batch geometry, its output laid out as `sharding`."""
    return jax.jit(functools.partial(gather_batch, batch_size=batch_size, num_examples=num_examples,
                                     normalization=normalization), out_shardings=sharding)


def augment_batch(batch: Batch, key: jax.Array, epoch: jax.Array, index: jax.Array, *, crop: int = 0,
                  normalization: Normalization = TUTORIAL_NORMALIZATION) -> Batch:
    """Random crops (with `crop` > 0) then left-right mirrors, drawn from (key, epoch, batch index).

    A crop takes a random 32x32 window of the image zero-padded by `crop` pixels on every
    side (torchvision's `RandomCrop(32, padding=crop)`; zero is black before normalisation);
    each image is then mirrored with probability 1/2. Pure and jittable: the engine calls it
    inside the train step, so members that share a seed see the same augmented batch.
    """
    images = batch["inputs"]
    if crop:
        crop_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, _CROP_STREAM), epoch), index)
        offsets = jax.random.randint(crop_key, (images.shape[0], 2), 0, 2 * crop + 1)
        black = normalize(jnp.zeros((images.shape[-1],), jnp.uint8), normalization)
        n, height, width, channels = images.shape
        padded = jnp.broadcast_to(black, (n, height + 2 * crop, width + 2 * crop, channels))
        padded = padded.at[:, crop:crop + height, crop:crop + width].set(images)
        images = jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0), (height, width, channels)))(
            padded, offsets)
    flip_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, _FLIP_STREAM), epoch), index)
    flip = jax.random.bernoulli(flip_key, 0.5, images.shape[:1])
    flipped = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    return batch | {"inputs": flipped}


class ResidentLoader:
    """The whole split on the device; batches gathered there.

    The images stay uint8 (154 MB for CIFAR-10's train split) and each batch is normalised
    inside the gather. With a `mesh` (see `kdjax.parallel`) every device holds the split and
    gathers its own rows of each batch, which arrives split along `"batch"`.
    """

    def __init__(self, split: Split, batch_size: int, key: jax.Array, *, shuffle: bool = True,
                 mesh: Mesh | None = None, normalization: Normalization = TUTORIAL_NORMALIZATION):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if mesh is not None:
            check_batch_size(batch_size, mesh)
        self.mesh, self.num_examples, self.batch_size = mesh, len(split), batch_size
        self.key, self.shuffle = key, shuffle
        self.data = jax.device_put(split.arrays()) if mesh is None else replicate(split.arrays(), mesh)
        self._gather = _batch_gatherer(batch_size, self.num_examples, None if mesh is None else batch_sharding(mesh),
                                       tuple(map(tuple, normalization)))

    def __len__(self) -> int:
        """Batches per epoch, the last one padded."""
        return num_batches(self.num_examples, self.batch_size)

    def order(self, epoch: int) -> jax.Array:
        return epoch_order(self.key, epoch, self.num_examples, self.batch_size, self.shuffle)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch `start` on."""
        order = self.order(epoch) if self.mesh is None else np.asarray(self.order(epoch))
        for index in range(start, len(self)):
            yield self._gather(self.data, order, np.int32(index))
