"""Sequences for next-token language modelling: a token array or a text file cut into windows.

A window is `time + 1` consecutive tokens: its first `time` are the inputs, its last `time`
the labels (the next token at each position). Windows start every `stride` tokens (default
`time`: they tile the text without overlap). The last `test_fraction` of the tokens, taken
before cutting, is the test split, so no test window shares a token with a training one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time as clock

import numpy as np

from kdjax.data.formats import Split, chunks
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


@dataclasses.dataclass(frozen=True, eq=False)
class TokenWindows:
    """Windows `[n, time]` int32 of a token array (a memory map, say), cut when read: row i is
    `tokens[i * stride + shift : i * stride + shift + time]` (`shift` 0: inputs, 1: next-token labels)."""

    tokens: np.ndarray
    time: int
    stride: int
    shift: int = 0
    first: int = 0  # the first window's number: a slice of windows is windows too
    count: int | None = None

    def __post_init__(self) -> None:
        if self.count is None:
            object.__setattr__(self, "count", len(range(0, len(self.tokens) - self.time, self.stride)))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.count, self.time)

    dtype = np.dtype(np.int32)
    ndim = 2

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, which) -> "TokenWindows | np.ndarray":
        if isinstance(which, slice):
            start, stop, step = which.indices(self.count)
            if step != 1:
                raise IndexError("token windows take slices of step 1")
            return dataclasses.replace(self, first=self.first + start, count=max(0, stop - start))
        rows = np.asarray(which)
        if rows.size and (rows.min() < -self.count or rows.max() >= self.count):
            raise IndexError(f"window index out of range for {self.count} windows")
        starts = (self.first + rows % max(self.count, 1)) * self.stride + self.shift
        return np.asarray(self.tokens[starts[..., None] + np.arange(self.time)], np.int32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[np.arange(self.count)]
        return rows if dtype is None else rows.astype(dtype)


def lazy_windows(tokens: np.ndarray, time: int, stride: int | None = None) -> Split:
    """`windows(tokens, time, stride)` cut when read, never copied whole (`tokens` may be a memory map)."""
    stride = time if stride is None else stride
    windows(tokens[:time + 1], time, stride)  # the same checks on a window's worth
    if len(tokens) < time + 1:
        windows(tokens, time, stride)
    return Split(TokenWindows(tokens, time, stride), TokenWindows(tokens, time, stride, shift=1))


def from_tokens(tokens: np.ndarray, *, time: int, vocab_size: int | None = None, stride: int | None = None,
                test_fraction: float = 0.1, name: str = "tokens") -> Dataset:
    """A next-token data set from `tokens` `[length]` integers in `[0, vocab_size)` (default: the largest + 1)."""
    start = clock.perf_counter()
    mapped = isinstance(tokens, np.memmap)
    tokens = tokens if mapped else np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{name}: tokens must be integers [length], got {tokens.dtype} {tokens.shape}")
    largest, start_of = -1, 0
    for chunk in chunks(tokens):  # a chunk at a time: a memory-mapped file is never read whole into memory
        if chunk.min() < 0 or (vocab_size is not None and chunk.max() >= vocab_size):
            index = int(np.flatnonzero((chunk < 0) | (chunk >= (vocab_size or np.inf)))[0])
            hint = "" if vocab_size is None else ": tokenise with the model's tokenizer, or state its vocabulary"
            raise ValueError(f"{name}: token ids must lie in [0, {vocab_size if vocab_size is not None else 'vocab'}),"
                             f" found {int(chunk[index])} at position {start_of + index}{hint}")
        largest, start_of = max(largest, int(chunk.max())), start_of + len(chunk)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    vocab_size = largest + 1 if vocab_size is None else vocab_size
    cut = int(round(len(tokens) * (1 - test_fraction)))
    cutter = lazy_windows if mapped else windows
    train, test = cutter(tokens[:cut], time, stride), cutter(tokens[cut:], time)
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
    """A next-token data set from an `.npy` file of token ids `[length]`, memory-mapped (any size; loaded without
    pickle): its windows are read as batches need them (`TokenWindows`)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"token file {path} does not exist")
    try:
        tokens = np.load(path, allow_pickle=False, mmap_mode="r")  # windows are cut as they are read
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy array of token ids ({error})") from None
    return from_tokens(tokens, time=time, vocab_size=vocab_size, stride=stride, test_fraction=test_fraction,
                       name=f"tokens {path}")
