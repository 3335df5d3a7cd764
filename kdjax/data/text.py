"""Sequences for next-token language modelling: a token array or a text file cut into windows.

A window is `time + 1` consecutive tokens: its first `time` are the inputs, its last `time`
the labels (the next token at each position). Windows start every `stride` tokens (default
`time`: they tile the text without overlap). The last `test_fraction` of the tokens, taken
before cutting, is the test split, so no test window shares a token with a training one.
"""

from __future__ import annotations

import os
import pathlib
import time as clock

import numpy as np

from kdjax.data.formats import Split
from kdjax.data.dataset import DataNotFoundError, Dataset

PYTHON_TEXT = "python-docs"  # CPython's own help text (`pydoc_data.topics`, ~465k characters, ships with Python)


def windows(tokens: np.ndarray, time: int, stride: int | None = None) -> Split:
    """Token windows `[n, time]` and next-token labels `[n, time]` from `tokens` `[length]`."""
    stride = time if stride is None else stride
    if time < 1 or stride < 1:
        raise ValueError(f"window length and stride must be positive, got {time} and {stride}")
    if len(tokens) < 2:
        raise ValueError(f"{len(tokens):,} token(s) cannot make one input and its next token: more text is needed")
    if len(tokens) < time + 1:
        raise ValueError(f"{len(tokens):,} tokens cannot fill one window of {time} + 1; use --window "
                         f"{len(tokens) - 1} or less, or more text")
    starts = np.arange(0, len(tokens) - time, stride)
    cut = tokens[starts[:, None] + np.arange(time + 1)[None, :]].astype(np.int32)
    return Split(cut[:, :-1], cut[:, 1:])


def from_tokens(tokens: np.ndarray, *, time: int, vocab_size: int | None = None, stride: int | None = None,
                test_fraction: float = 0.1, name: str = "tokens") -> Dataset:
    """A next-token data set from `tokens` `[length]` integers in `[0, vocab_size)` (default: the largest + 1)."""
    start = clock.perf_counter()
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{name}: tokens must be integers [length], got {tokens.dtype} {tokens.shape}")
    if len(tokens) and (tokens.min() < 0 or (vocab_size is not None and tokens.max() >= vocab_size)):
        bad = (tokens < 0) | (tokens >= (vocab_size if vocab_size is not None else np.inf))
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size if vocab_size is not None else 'vocab'}), "
                         f"found {int(tokens[index])} at position {index}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    vocab_size = int(tokens.max(initial=-1)) + 1 if vocab_size is None else vocab_size
    cut = int(round(len(tokens) * (1 - test_fraction)))
    train, test = windows(tokens[:cut], time, stride), windows(tokens[cut:], time)
    return Dataset(train, test, name, clock.perf_counter() - start, vocab_size, name)


def python_text() -> str:
    from pydoc_data import topics

    return "\n".join(topics.topics[name] for name in sorted(topics.topics))


TOKENIZATIONS = ("chars", "bytes")
BYTE_VOCABULARY = 256
TEXT_DATASETS = {"text": "chars", "bytes": "bytes"}  # `--dataset` spelling -> tokenisation (`NAME` or `NAME:PATH`)


def load_text(path: str | os.PathLike | None = None, *, time: int = 128, stride: int | None = None,
              test_fraction: float = 0.1, vocab_size: int | None = None, tokens: str = "chars") -> Dataset:
    """A data set of the UTF-8 text at `path` (default: Python's help text), tokenised as

    - `"chars"`: one token per distinct character, numbered in sorted order (vocabulary: the alphabet);
    - `"bytes"`: its UTF-8 bytes, token = byte value (vocabulary 256, the same for every text, as byte-level
      models such as ByT5 use).

    `vocab_size`, if given, may exceed the alphabet (or 256).
    """
    if tokens not in TOKENIZATIONS:
        raise ValueError(f"unknown tokenisation {tokens!r}; choose from {', '.join(TOKENIZATIONS)}")
    if path is None:
        text, name = python_text(), PYTHON_TEXT
    else:
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"text file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        name = f"text {path}"
        if not text:
            raise ValueError(f"{path} is empty: a text data set needs text to cut into windows")
    if tokens == "bytes":
        ids, alphabet_size = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32), BYTE_VOCABULARY
        name += " (UTF-8 bytes)"
    else:
        alphabet = sorted(set(text))
        ids, alphabet_size = np.searchsorted(np.array(alphabet), np.array(list(text))).astype(np.int32), len(alphabet)
    return from_tokens(ids, time=time, vocab_size=vocab_size or alphabet_size, stride=stride,
                       test_fraction=test_fraction, name=name)


def load_tokens(path: str | os.PathLike, *, time: int = 128, stride: int | None = None,
                test_fraction: float = 0.1, vocab_size: int | None = None) -> Dataset:
    """A next-token data set from an `.npy` file of token ids `[length]` (loaded without pickle)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"token file {path} does not exist")
    try:
        tokens = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy array of token ids ({error})") from None
    return from_tokens(tokens, time=time, vocab_size=vocab_size, stride=stride, test_fraction=test_fraction,
                       name=f"tokens {path}")
