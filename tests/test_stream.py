"""Streamed input: the same members as the resident path, image folders read as torchvision reads them, a killed
run resuming exactly, and one-line errors for bad files."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from engine_helpers import tiny_data, train_batchnorm
from PIL import Image

from kdjax.data import Dataset, Split, load_dataset
from kdjax.data.images import (ImageFileError, ImageFiles, eval_view, image_folder, labelled_files, load_image_folder,
                               resized_crop)
from kdjax.data.normalization import NormalizationError, choose
from kdjax.data.stream import StreamingLoader, choose_loader
from kdjax.data.text import TokenWindows, from_tokens, load_tokens
from kdjax.engine import Member

REFERENCE = pathlib.Path(__file__).parent / "reference" / "image_transforms.npz"


def make_folder(root: pathlib.Path, per_class: int = 8, classes: int = 3, seed: int = 0) -> pathlib.Path:
    """`root/train/<class>/*.JPEG` and `root/val/<class>/*.JPEG` of random sizes (40-89 pixels a side)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = rng.integers(40, 90, 2)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    return make_folder(tmp_path_factory.mktemp("images"))


def _state(program):
    return jax.tree.map(np.asarray, (program.states.params, program.states.model_state))


@pytest.mark.slow
def test_streamed_members_are_bitwise_the_resident_ones(tmp_path):
    """Two seeds (two streams), random crops and flips drawn on the device, BatchNorm statistics: streaming changes
    where a batch is read, not which examples or views a member trains on (the teacher's side: the killed-run test
    below)."""
    members = [Member.of("ce", 0), Member.of("ce", 1)]
    resident, streamed = (train_batchnorm(tmp_path, members, name=loader, augment="crop-flip", data_loader=loader)
                          for loader in ("resident", "streaming"))
    jax.tree.map(np.testing.assert_array_equal, _state(resident[0]), _state(streamed[0]))
    for x, y in zip(resident[0].results, streamed[0].results):  # the reported loss: a reduction XLA may fuse
        np.testing.assert_allclose([x.history[0]["train_loss"], x.test_loss],  # another way in either program
                                   [y.history[0]["train_loss"], y.test_loss], rtol=1e-6)


def test_the_loader_chooses_resident_where_the_split_fits_and_streams_image_files(folder):
    split = tiny_data().train  # 160 images of 3 KiB
    assert choose_loader(split, "auto", 10 * 2**20)[0] == "resident"
    assert choose_loader(split, "auto", 2**19) == ("streaming", "the split's 0.0 GiB exceed 50% of the device's "
                                                                "0.0 GiB free")
    assert choose_loader(split, "streaming", 2**40) == ("streaming", "asked for")
    files = load_image_folder(folder, size=32).train
    assert choose_loader(files, "auto", 2**40)[0] == "streaming"
    with pytest.raises(ValueError, match=r"images decoded and cropped on the host .* are streamed: --data-loader"):
        choose_loader(files, "resident", 2**40)


def test_a_streamed_epoch_is_the_resident_order_in_every_process_row_and_worker_count(folder):
    """The host reads epoch_order(key, epoch) exactly; crops are a function of (key, epoch, position), so worker
    processes draw what the main process draws, and the last batch's padding is marked absent."""
    data = load_image_folder(folder, size=32)
    keys = jax.random.split(jax.random.key(3), 2)
    inline, workers = (list(map(jax.device_get, StreamingLoader(data.train, 5, keys, workers=w).epoch(1)))
                       for w in (0, 2))
    from kdjax.data.pipeline import epoch_order
    for stream in range(2):
        order = np.asarray(epoch_order(keys[stream], 1, len(data.train), 5))
        np.testing.assert_array_equal(np.concatenate([b["index"][stream] for b in inline]), order)
    for a, b in zip(inline, workers):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    assert inline[-1]["present"].sum() == 2 * (len(data.train) % 5)
    resumed = list(map(jax.device_get, StreamingLoader(data.train, 5, keys, workers=0).epoch(1, start=3)))
    jax.tree.map(np.testing.assert_array_equal, inline[3:], resumed)


def test_image_views_equal_torchvision_pixel_for_pixel():
    """Against `tests/reference/image_transforms.npz` (`make_image_reference.py`: torchvision's `Resize(73)` +
    `CenterCrop(64)`, ImageNet's 256/224 scaled down, and `resized_crop` + `hflip` at boxes drawn by
    `RandomResizedCrop.get_params`)."""
    reference = np.load(REFERENCE)
    for i in range(len(reference["sizes"])):
        image = Image.fromarray(reference[f"image{i}"])
        np.testing.assert_array_equal(eval_view(image, 64, 73), reference[f"eval{i}"])
        top, left, height, width, flip = reference["boxes"][i]
        np.testing.assert_array_equal(resized_crop(image, (top, left, height, width), 64, bool(flip)),
                                      reference[f"train{i}"])


def test_random_resized_boxes_follow_torchvisions_distribution():
    """`random_resized_box` draws as `RandomResizedCrop.get_params`: area share in [0.08, 1], ratio in [3/4, 4/3]
    up to rounding, inside the image, and the centre fallback for a strip no crop of that ratio fits."""
    from kdjax.data.images import random_resized_box
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_box(500, 375, rng) for _ in range(2000)])
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 375).all() and (left + width <= 500).all()
    share = height * width / (500 * 375)
    assert 0.075 < share.min() < 0.12 and share.max() <= 1.0 and 0.4 < share.mean() < 0.6  # mean of U(0.08, 1)
    assert (width / height > 0.7).all() and (width / height < 1.4).all()
    assert random_resized_box(1000, 10, np.random.default_rng(0)) == (0, 493, 10, 13)  # 4/3 of the height


def test_bad_image_folders_and_label_files_are_refused_in_one_line(folder, tmp_path):
    empty = make_folder(tmp_path / "empty", per_class=1)
    for image in (empty / "train" / "n00000001").iterdir():
        image.unlink()
    with pytest.raises(ImageFileError, match=r"n00000001: class folder holds no images .*remove it or add its images"):
        image_folder(empty / "train")
    with pytest.raises(ImageFileError, match="has no class folders"):
        image_folder(empty / "train" / "n00000000")
    _, _, classes = image_folder(folder / "train")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.JPEG").write_bytes((folder / "val" / "n00000000" / "img0.JPEG").read_bytes())
    (tmp_path / "labels.txt").write_text("# file class\na.JPEG n00000002\nb.JPEG 1\n")
    with pytest.raises(ImageFileError, match=r"labels.txt:3: names b.JPEG, which is not in .*flat$"):
        labelled_files(flat, tmp_path / "labels.txt", classes)
    (tmp_path / "labels.txt").write_text("a.JPEG n09999999\n")
    with pytest.raises(ImageFileError, match=r"labels.txt:1: class 'n09999999' is neither one of the 3 class names"):
        labelled_files(flat, tmp_path / "labels.txt", classes)
    (tmp_path / "labels.txt").write_text("a.JPEG n00000002\n")
    paths, labels = labelled_files(flat, tmp_path / "labels.txt", classes)
    assert paths == [str(flat / "a.JPEG")] and labels.tolist() == [2]
    with pytest.raises(NormalizationError, match="would decode every image file"):
        choose("dataset", dataset="imagenet", train_images=ImageFiles(paths=paths, size=32, resize=36), used_images=None)


def test_an_unreadable_image_stops_the_workers_naming_it_or_is_skipped_and_counted(folder, tmp_path):
    import shutil
    root = shutil.copytree(folder, tmp_path / "copy")
    broken = root / "train" / "n00000001" / "img3.JPEG"
    broken.write_bytes(broken.read_bytes()[:400])  # truncated mid-scan
    keys = jax.random.split(jax.random.key(0), 1)
    strict = load_image_folder(root, size=32)
    start = time.perf_counter()
    with pytest.raises(ImageFileError, match=r"img3.JPEG: cannot decode this image .*--skip-bad-images\)$"):
        list(StreamingLoader(strict.train, 8, keys, workers=2).epoch(0))
    assert time.perf_counter() - start < 60  # raised from the worker, not a hang
    skipping = load_dataset(f"imagenet:{root}", image_size=32, skip_bad_images=True)
    loader = StreamingLoader(skipping.train, 8, keys, workers=2)
    batches = list(map(jax.device_get, loader.epoch(0)))
    assert loader.skipped == 1
    bad = strict.train.inputs.paths.index(str(broken))
    absent = [b["index"][0][~b["present"][0]] for b in batches]
    assert bad in np.concatenate(absent)


def test_memory_mapped_tokens_are_cut_into_the_same_windows_and_checked(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50, 3000).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    mapped, loaded = load_tokens(tmp_path / "tokens.npy", time=16), from_tokens(tokens, time=16)
    assert isinstance(mapped.train.inputs, TokenWindows) and isinstance(mapped.train.inputs.tokens, np.memmap)
    for a, b in ((mapped.train, loaded.train), (mapped.test, loaded.test)):
        np.testing.assert_array_equal(np.asarray(a.inputs), b.inputs)
        np.testing.assert_array_equal(a.labels[np.array([[4, 0], [2, 9]])], b.labels[[[4, 0], [2, 9]]])
        assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(np.asarray(mapped.train.take(5).labels), loaded.train.labels[:5])
    np.save(tmp_path / "bad.npy", np.where(np.arange(3000) == 2500, 77, tokens))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\), found 77 at position 2500: tokenise"):
        load_tokens(tmp_path / "bad.npy", time=16, vocab_size=50)


def test_an_uncompressed_npz_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), "y_test": np.arange(8) % 4}
    np.savez(tmp_path / "a.npz", **arrays)
    data = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    base = data.train.inputs
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    np.testing.assert_array_equal(data.train.inputs, arrays["x_train"])
    np.testing.assert_array_equal(data.test.inputs, arrays["x_test"])


@pytest.mark.slow
def test_a_killed_streaming_run_resumes_to_the_members_of_a_run_never_stopped(folder, tmp_path):
    """kill -9 mid-epoch, then the same command: the run resumes from its last step checkpoint and ends with the
    parameters and history of a run never stopped (host-drawn crops)."""
    worker = [sys.executable, str(pathlib.Path(__file__).parent / "stream_worker.py"), str(folder)]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent)}

    def finish(run_dir: pathlib.Path) -> tuple[dict, str]:
        done = subprocess.run([*worker, str(run_dir), "2"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.split("RESULT ", 1)[1]), done.stdout

    straight, _ = finish(tmp_path / "straight")
    killed = subprocess.Popen([*worker, str(tmp_path / "cut"), "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "cut" / "kd"
    deadline = time.monotonic() + 240
    while killed.poll() is None and time.monotonic() < deadline:
        steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.is_dir() else []
        if any(s >= 5 for s in steps):  # inside the second epoch (3 batches each)
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    resumed, log = finish(tmp_path / "cut")
    assert "resuming at epoch 2" in log
    assert resumed["sums"] == straight["sums"]
    keep = ("train_loss", "test_loss", "test_accuracy")
    assert [[{k: row[k] for k in keep} for row in h] for h in resumed["history"]] == \
        [[{k: row[k] for k in keep} for row in h] for h in straight["history"]]


def test_token_windows_slice_and_index_like_arrays():
    tokens = np.arange(100, dtype=np.int64)
    windows = TokenWindows(tokens, 10, 10)
    assert windows.shape == (9, 10) and len(windows[2:5]) == 3
    np.testing.assert_array_equal(windows[2:5][np.array([0, 2])], [np.arange(20, 30), np.arange(40, 50)])
    np.testing.assert_array_equal(TokenWindows(tokens, 10, 10, shift=1)[np.array([8])], [np.arange(81, 91)])
    with pytest.raises(IndexError):
        windows[np.array([9])]


def test_a_split_of_image_files_keeps_its_view_when_cut(folder):
    data = load_image_folder(folder, size=32)
    assert isinstance(data, Dataset) and data.num_classes == 3 and data.train.inputs.shape == (24, 32, 32, 3)
    assert data.train.inputs.random_crop and not data.test.inputs.random_crop
    cut = data.train.take(5)
    assert isinstance(cut, Split) and cut.inputs.paths == data.train.inputs.paths[:5] and cut.inputs.random_crop
    assert data.fingerprint == load_image_folder(folder, size=32).fingerprint
    from kdjax.run import evaluation_view
    held_out = evaluation_view(data.train.rows(slice(20, None)))  # --validation-size: scored on the validation view
    assert not held_out.inputs.random_crop and held_out.inputs.paths == data.train.inputs.paths[20:]
