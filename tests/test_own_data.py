"""A user's own data as a new user brings it: float images under every normalisation, bad pixels, labels and token
ids refused at load time with the split and index named, the class count stated, logged and recorded."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import Dataset, NormalizationError, Split, from_arrays, from_tokens, gather_batch, load_text
from kdjax.data.normalization import NAMED, choose
from kdjax.experiments.common import run


def _images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _npz(path, train_images, train_labels, test_images, test_labels):
    np.savez(path, x_train=train_images, y_train=train_labels, x_test=test_images, y_test=test_labels)
    return f"npz:{path}"


def _flags(tmp_path, dataset: str, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--student", "resnet8", "--epochs", "1", "--batch-size", "32",
            "--checkpoint-dir", str(tmp_path / "ck"), "--output-dir", str(tmp_path / "runs"), *extra]


@pytest.mark.parametrize("choice", ["auto", "none", "dataset", "subset", "imagenet", "cifar10", "cifar100"])
def test_float_images_take_every_normalisation(choice):
    """Floats are [0, 1] images as given (uint8 / 255 otherwise): the statistics are the same for both forms."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    floats = pixels.astype(np.float32) / 255.0
    (mean, std), _ = choose(choice, dataset="npz", train_images=floats, used_images=floats[:20])
    if choice in NAMED:
        assert (mean, std) == NAMED[choice]
    elif choice in ("auto", "none"):  # float images default to "as given"
        assert (mean, std) == ((0.0,) * 3, (1.0,) * 3)
    else:
        used = floats if choice == "dataset" else floats[:20]
        np.testing.assert_allclose(mean, used.reshape(-1, 3).mean(0), atol=1e-6)
        np.testing.assert_allclose(std, used.reshape(-1, 3).std(0), atol=1e-6)
        assert choose(choice, dataset="npz", train_images=pixels, used_images=pixels[:20])[0] == (mean, std)
    split = Split(floats, np.zeros(40, np.int32))
    batch = gather_batch(split.arrays(), jnp.arange(40), 0, batch_size=8, num_examples=40,
                         normalization=(mean, std))
    np.testing.assert_allclose(batch["inputs"], (floats[:8] - np.array(mean)) / np.array(std), rtol=1e-6, atol=1e-6)


def test_named_statistics_refuse_float_images_that_are_no_pixels():
    standardised = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
    with pytest.raises(NormalizationError, match=r"imagenet is for \[0, 1\] pixels.*use --normalize none"):
        choose("imagenet", dataset="npz", train_images=standardised, used_images=standardised)
    with pytest.raises(NormalizationError, match="for 3-channel images, these have 1"):
        choose("cifar10", dataset="npz", train_images=standardised[..., :1], used_images=standardised[..., :1])


@pytest.mark.slow
def test_a_float_npz_trains_under_the_default_and_the_recipe(tmp_path, capsys):
    labels = np.arange(96) % 4
    dataset = _npz(tmp_path / "float.npz", _images(64), labels[:64], _images(32, 1), labels[64:])
    assert run("baseline", _flags(tmp_path, dataset)) == 0
    assert "normalization: none (the images as given)" in capsys.readouterr().out
    assert run("baseline", _flags(tmp_path, dataset, "--recipe", "cifar-kd", "--epochs", "1", "--milestones",
                                  "1")) == 0
    assert "normalization: the training split's mean (" in capsys.readouterr().out


def test_non_finite_pixels_are_refused_at_load_naming_the_split_and_index(tmp_path, capsys):
    images = _images(64)
    images[37, 2, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"train images hold NaN or infinite pixels \(first at index 37\)"):
        from_arrays(images, np.zeros(64, int), _images(8), np.zeros(8, int))
    test_images = _images(8)
    test_images[5, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"test images hold NaN or infinite pixels \(first at index 5\)"):
        from_arrays(_images(64), np.zeros(64, int), test_images, np.zeros(8, int))
    dataset = _npz(tmp_path / "nan.npz", images, np.arange(64) % 4, _images(32), np.arange(32) % 4)
    assert run("baseline", _flags(tmp_path, dataset)) == 1
    captured = capsys.readouterr()
    assert "first at index 37" in captured.err and "\n" not in captured.err.strip()
    assert "data:" not in captured.out and "loss" not in captured.out  # refused as it loads, before training


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\), found 7 at position 3"):
        from_tokens(np.array([0, 1, 2, 7, 1, 2, 3, 4, 0, 1, 2]), time=2, vocab_size=5)
    with pytest.raises(ValueError, match="found -1 at position 1"):
        from_tokens(np.array([0, -1, 2, 3, 1, 2, 3, 4, 0, 1, 2]), time=2)
    windows = np.array([[0, 1], [2, 9]], np.int32)
    with pytest.raises(ValueError, match=r"test token ids must lie in \[0, 5\), found 0..9 \(first at index 1: 9\)"):
        Dataset(Split(windows[:1], windows[:1]), Split(windows, np.zeros_like(windows)), "t", 0.0, 5, "t")


@pytest.mark.parametrize("labels, message", [
    (np.array(["cat", "dog"] * 4), "must be integer class ids, got <U3 .*'cat'.*map them to 0..classes-1"),
    (np.array([0, 1, 3.5, 2, 0, 1, 2, 3]), r"must be integer class ids, got float64 with 3.5 at index 2"),
    (np.array([0.0, 1, 2, 3] * 2), r"are float64, not integers: pass them as labels.astype\(np.int64\)"),
    (np.array([True, False] * 4), "must be integer class ids, got bool"),
])
def test_labels_that_are_not_integers_are_refused_not_coerced(labels, message):
    with pytest.raises(ValueError, match="train labels " + message):
        from_arrays(_images(8), labels, _images(2), np.array([0, 1]))


@pytest.mark.slow
def test_a_stated_class_count_bounds_the_labels_and_is_logged_recorded_and_identified(tmp_path, capsys):
    labels = np.arange(96) % 11  # a label 10: eleven classes
    dataset = _npz(tmp_path / "eleven.npz", _images(64), labels[:64], _images(32, 1), labels[64:])
    assert run("baseline", _flags(tmp_path, dataset, "--num-classes", "10")) == 1
    err = capsys.readouterr().err.strip()
    assert "train labels must lie in [0, 10), found 0..10 (first at index 10: 10)" in err and "\n" not in err
    assert run("baseline", _flags(tmp_path, dataset)) == 0
    assert "train 64, test 32, 11 classes" in capsys.readouterr().out
    assert run("baseline", _flags(tmp_path, dataset, "--num-classes", "12")) == 0
    assert "12 classes" in capsys.readouterr().out
    runs = sorted((tmp_path / "runs").glob("baseline-*"), key=lambda p: p.stat().st_mtime)
    assert [json.loads((r / "config.json").read_text())["num_classes"] for r in runs] == [11, 12]
    assert "11 classes" in (runs[0] / "summary.md").read_text()
    assert len(list((tmp_path / "ck" / "ce").iterdir())) == 2  # a 12-way head is another model


def test_malformed_lists_and_an_empty_text_get_errors_that_can_help(tmp_path, capsys):
    assert run("kd", ["--seeds", "0,,1"]) == 2
    assert "--seeds: takes comma-separated integers without empty items, got '0,,1'" in capsys.readouterr().err
    assert run("methods", ["--methods", "ce,kd,"]) == 2
    assert "without empty items" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty: a text data set needs text") as error:
        load_text(tmp_path / "empty.txt")
    assert "--window" not in str(error.value)
    (tmp_path / "short.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 2)
    with pytest.raises(ValueError, match=r"use --window 4 or less, or more text"):
        load_text(tmp_path / "short.txt", time=16)
