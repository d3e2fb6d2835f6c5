"""PROVISIONAL (to be replaced by the C++-backed module of issue 2; the API is fixed).

Waveform batching: repeat-padding/cropping to a fixed length, and zero-padded collation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def extension_available() -> bool:
    return False


def active_backend() -> str:
    return "numpy"


def backend_reason() -> str:
    return "provisional module"


def _as_float(w: np.ndarray) -> np.ndarray:
    if w.dtype == np.int16:
        return w.astype(np.float32) / 32768.0
    return np.asarray(w, dtype=np.float32)


def repeat_pad(
    waves: Sequence[np.ndarray],
    length: int,
    offsets: str | Sequence[int] | np.ndarray = "start",
    *,
    rng: int | np.random.Generator | None = None,
    normalize: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(B,) 1-D waves -> (B, length) float32: crop at offset, or repeat from the start."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    result = np.empty((len(waves), length), np.float32) if out is None else out
    for i, w in enumerate(waves):
        w = _as_float(w)
        n = w.shape[0]
        if n >= length:
            if isinstance(offsets, str):
                off = 0 if offsets == "start" else int(gen.integers(0, n - length + 1))
            else:
                off = int(offsets[i])
            row = w[off : off + length]
        else:
            row = np.resize(w, length)
        if normalize:
            row = (row - row.mean()) / np.sqrt(row.var() + 1e-5)
        result[i] = row
    return result


def pad_collate(
    waves: Sequence[np.ndarray],
    multiple_of: int = 1,
    *,
    normalize: bool = False,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(B,) 1-D waves -> (batch (B, T) float32 zero-padded, lengths (B,) int64)."""
    lengths = np.array([w.shape[0] for w in waves], dtype=np.int64)
    T = int(-(-lengths.max() // multiple_of) * multiple_of)
    batch = np.zeros((len(waves), T), np.float32) if out is None else out
    batch[:] = 0
    for i, w in enumerate(waves):
        w = _as_float(w)
        if normalize:
            w = (w - w.mean()) / np.sqrt(w.var() + 1e-5)
        batch[i, : w.shape[0]] = w
    return batch, lengths
