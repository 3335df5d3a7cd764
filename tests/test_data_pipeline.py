"""Device batches: normalisation, seeded orders, padding masks, and resident == streaming."""

from __future__ import annotations

import functools

import jax
import numpy as np

from kdjax.data import MEAN, STD, ResidentLoader, Split, augment_batch, epoch_order, normalize


def _split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))


RECORDED_ORDER = [0, 8, 2, 4, 1, 7, 9, 5, 3, 6]  # jax 0.10.2, CPU


def test_normalize_is_to_tensor_then_normalize():
    pixels = np.array([[0, 128, 255]], np.uint8).reshape(1, 1, 3)
    expected = (pixels / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(normalize(pixels), expected, rtol=1e-6)


def test_epoch_order_is_a_padded_permutation_fixed_by_key_and_epoch():
    order = np.asarray(epoch_order(jax.random.key(0), 0, 10, 4))
    assert order.shape == (12,)
    assert sorted(order[:10]) == list(range(10)) and list(order[10:]) == [0, 0]
    np.testing.assert_array_equal(order, epoch_order(jax.random.key(0), 0, 10, 4))
    assert not np.array_equal(order, epoch_order(jax.random.key(0), 1, 10, 4))
    assert not np.array_equal(order, epoch_order(jax.random.key(1), 0, 10, 4))
    # jax.random's threefry stream is specified, so this order is the same on every machine;
    # a change here means a jax upgrade changed permutation() and reruns will shuffle differently.
    np.testing.assert_array_equal(order[:10], RECORDED_ORDER)


def _collect(loader, epoch):
    return [jax.tree.map(np.asarray, batch) for batch in loader.epoch(epoch)]


def test_an_epoch_covers_every_example_once_and_masks_the_padding():
    split = _split(250)
    split.inputs[:, 0, 0, 0] = np.arange(250)  # tag each image with its index
    batches = _collect(ResidentLoader(split, 128, jax.random.key(1)), 0)
    assert [int(b["mask"].sum()) for b in batches] == [128, 122]
    masks = np.concatenate([b["mask"] for b in batches])
    red = np.concatenate([b["inputs"] for b in batches])[masks][:, 0, 0, 0]
    indices = np.round((red * STD[0] + MEAN[0]) * 255.0).astype(int)
    assert sorted(indices) == list(range(250))
    labels = np.concatenate([b["label"] for b in batches])[masks]
    np.testing.assert_array_equal(labels, split.labels[indices])


def test_epochs_differ_and_no_recompilation_across_epochs():
    loader = ResidentLoader(_split(300), 128, jax.random.key(2))
    first, second = _collect(loader, 0), _collect(loader, 1)
    assert not np.array_equal(first[0]["label"], second[0]["label"]) or not np.array_equal(
        first[0]["inputs"], second[0]["inputs"]
    )
    assert loader._gather._cache_size() >= 1
    before = loader._gather._cache_size()
    _collect(loader, 2)
    assert loader._gather._cache_size() == before


def test_starting_mid_epoch_yields_the_remaining_batches():
    split = _split(300)
    loader = ResidentLoader(split, 128, jax.random.key(3))
    whole = _collect(loader, 1)
    rest = list(loader.epoch(1, start=1))
    assert len(rest) == 2
    np.testing.assert_array_equal(rest[0]["inputs"], whole[1]["inputs"])


def test_augmentation_flips_some_images_reproducibly():
    split = _split(256)
    (batch,) = _collect(ResidentLoader(split, 256, jax.random.key(4), shuffle=False), 0)
    key = jax.random.key(9)
    flipped = augment_batch(batch, key, 0, 0)
    again = jax.jit(augment_batch)(batch, key, 0, 0)
    other_epoch = augment_batch(batch, key, 1, 0)
    np.testing.assert_array_equal(flipped["inputs"], again["inputs"])
    mirrored = np.all(np.asarray(flipped["inputs"]) == np.asarray(batch["inputs"])[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(np.asarray(flipped["inputs"]) == np.asarray(batch["inputs"]), axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 80 < mirrored.sum() < 176
    assert not np.array_equal(flipped["inputs"], other_epoch["inputs"])


def test_crops_are_windows_of_the_black_padded_image_then_flipped():
    split = _split(64)
    (batch,) = _collect(ResidentLoader(split, 64, jax.random.key(4), shuffle=False), 0)
    out = np.asarray(jax.jit(functools.partial(augment_batch, crop=4))(batch, jax.random.key(9), 0, 0)["inputs"])
    black = (0.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    padded = np.broadcast_to(black, (64, 40, 40, 3)).copy()
    padded[:, 4:36, 4:36] = np.asarray(batch["inputs"])
    offsets = []
    for image, source in zip(out, padded):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if np.array_equal(image, (lambda w: w[:, ::-1] if flip else w)(source[dy:dy + 32, dx:dx + 32]))]
        assert matches, "an output image is no window of the padded image"
        offsets.append(matches[0][:2])
    assert len(set(offsets)) > 20  # offsets are drawn per image
    assert any(dy != 4 or dx != 4 for dy, dx in offsets)


def test_unshuffled_loader_is_in_order_for_evaluation():
    split = _split(10)
    batches = _collect(ResidentLoader(split, 4, jax.random.key(0), shuffle=False), 0)
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, split.labels)
