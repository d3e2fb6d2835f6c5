"""The NumPy fallback of ``cpc_fast._C``: same functions, same bits, same errors.

:mod:`cpc_fast.data.batching` uses it when the extension is not built or
``CPC_FAST_DISABLE_CPP=1``. Every function mirrors its C++ twin in ``csrc/module.cpp``:
arguments are checked in the same order with the same messages, and the output is identical
bit for bit (tests compare the two). Single-threaded: ``num_threads`` is only validated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

API_VERSION = 1
NORM_EPS = 1e-7  # added to the variance before the square root (kNormEps in batching.h)

_INT16_SCALE = np.float32(1.0 / 32768.0)  # exact: a power of two
_LANES = 8


def lengths(waves: Sequence[Any]) -> np.ndarray:
    """(B,) int64 sample counts, after the same checks as :func:`repeat_pad`."""
    _check_batch(waves)
    return np.array([_check_wave(w, i) for i, w in enumerate(waves)], dtype=np.int64)


def repeat_pad(
    waves: Sequence[Any],
    length: int,
    offsets: Any,
    normalize: bool = False,
    out: Any = None,
    num_threads: int = 0,
) -> np.ndarray:
    """(B,) waves -> (B, length) float32: ``w[off:off + length]``, or ``w[j % n]`` if shorter."""
    _check_threads(num_threads)
    _check_batch(waves)
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    _check_offsets(offsets, len(waves))
    segments = []  # (start, stop) of the part of each wave that the row repeats
    for i, w in enumerate(waves):
        n = _check_wave(w, i)
        off, hi = int(offsets[i]), max(n - length, 0)
        if off < 0 or off > hi:
            raise ValueError(
                f"{_item(i)}offset {off} is out of range [0, {hi}] for {n} samples and "
                f"length {length}"
            )
        segments.append((off, off + min(n, length)))
    result = _check_out(out, len(waves), length)
    _check_no_overlap(waves, result)
    for i, (w, (start, stop)) in enumerate(zip(waves, segments, strict=True)):
        _check_finite(w, i, start, stop)
        _fill_row(result[i], w[start:stop], length, normalize)
    return result


def pad_collate(
    waves: Sequence[Any],
    multiple_of: int,
    normalize: bool = False,
    out: Any = None,
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(B,) waves -> (batch (B, T) float32 zero-padded, lengths (B,) int64)."""
    _check_threads(num_threads)
    _check_batch(waves)
    if multiple_of <= 0:
        raise ValueError(f"multiple_of must be positive, got {multiple_of}")
    lens = np.array([_check_wave(w, i) for i, w in enumerate(waves)], dtype=np.int64)
    result = _check_out(out, len(waves), -(-int(lens.max()) // multiple_of) * multiple_of)
    _check_no_overlap(waves, result)
    for i, w in enumerate(waves):
        _check_finite(w, i, 0, w.shape[0])
        _fill_row(result[i], w, w.shape[0], normalize)
    return result, lens


def _item(i: int) -> str:
    return f"waves[{i}]: "


def _check_threads(num_threads: int) -> None:
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")


def _check_batch(waves: Any) -> None:
    if not isinstance(waves, (list, tuple)):
        raise TypeError(
            f"waves must be a list or tuple of 1-D numpy arrays, got {type(waves).__name__}"
        )
    if len(waves) == 0:
        raise ValueError("waves is empty: need at least one waveform")


def _check_wave(w: Any, i: int) -> int:
    """The sample count of ``waves[i]`` once its type, rank, dtype and layout are valid."""
    if not isinstance(w, np.ndarray):
        raise TypeError(
            f"{_item(i)}expected a 1-D numpy array (float32 or int16), got {type(w).__name__}"
        )
    if w.ndim != 1:
        raise ValueError(f"{_item(i)}expected a 1-D array, got shape {w.shape}")
    if w.dtype != np.float32 and w.dtype != np.int16:
        raise TypeError(f"{_item(i)}dtype {w.dtype} is not supported (use float32 or int16)")
    if w.shape[0] == 0:
        raise ValueError(f"{_item(i)}empty waveform (0 samples)")
    if w.strides[0] % w.itemsize != 0:
        raise ValueError(
            f"{_item(i)}stride of {w.strides[0]} bytes is not a multiple of the sample size"
        )
    return int(w.shape[0])


def _check_offsets(offsets: Any, count: int) -> None:
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64:
        got = (
            f"dtype {offsets.dtype}" if isinstance(offsets, np.ndarray) else type(offsets).__name__
        )
        raise TypeError(f"offsets must be an int64 numpy array, got {got}")
    if offsets.ndim != 1:
        raise ValueError(f"offsets must be 1-D, got shape {offsets.shape}")
    if offsets.shape[0] != count:
        raise ValueError(f"offsets has {offsets.shape[0]} entries for {count} waveforms")


def _check_out(out: Any, rows: int, cols: int) -> np.ndarray:
    if out is None:
        if cols > (2**63 - 1) // 4 // rows:
            raise ValueError(f"an output of shape {(rows, cols)} is too large")
        return np.empty((rows, cols), dtype=np.float32)
    if not isinstance(out, np.ndarray):
        raise TypeError(
            "out must be a float32 numpy array (or a CPU torch tensor), got " + type(out).__name__
        )
    if out.dtype != np.float32:
        raise TypeError(f"out must have dtype float32, got {out.dtype}")
    if out.shape != (rows, cols):
        raise ValueError(f"out has shape {out.shape}, expected {(rows, cols)}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if out.ctypes.data % 4 != 0:
        raise ValueError("out must be aligned to 4 bytes")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _check_no_overlap(waves: Sequence[np.ndarray], out: np.ndarray) -> None:
    for i, w in enumerate(waves):
        if np.may_share_memory(w, out):
            raise ValueError(f"{_item(i)}shares memory with out")


def _check_finite(w: np.ndarray, i: int, start: int, stop: int) -> None:
    """The float32 samples w[start:stop] that are copied into the row must be finite."""
    if w.dtype != np.float32:
        return
    finite = np.isfinite(w[start:stop])
    if finite.all():
        return
    at = start + int(np.argmin(finite))
    value = float(w[at])
    text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    raise ValueError(f"{_item(i)}sample {at} is {text} (waveforms must be finite)")


def _as_float32(seg: np.ndarray) -> np.ndarray:
    if seg.dtype == np.int16:
        return np.multiply(seg, _INT16_SCALE, dtype=np.float32)
    return seg


def _fill_row(row: np.ndarray, seg: np.ndarray, valid: int, normalize: bool) -> None:
    """row[j] = seg[j % p] for j < valid, 0 after; optionally normalised (see batching.h)."""
    values = _as_float32(seg)
    if normalize:
        seg64 = values.astype(np.float64)
        mean, inv_std = _row_stats(seg64, valid)
        values = ((seg64 - mean) * inv_std).astype(np.float32)
    filled = min(values.shape[0], valid)
    row[:filled] = values[:filled]
    while filled < valid:  # whole periods, doubling what is already written
        count = min(filled, valid - filled)
        row[filled : filled + count] = row[:count]
        filled += count
    row[valid:] = 0.0


def _lane_sums(x: np.ndarray) -> list[float]:
    """Lane k: the sequential float64 sum of x[k::8], the order in which the C++ kernel adds."""
    if x.shape[0] == 0:
        return [-0.0] * _LANES
    rows = -(-x.shape[0] // _LANES)
    padded = np.full(rows * _LANES, -0.0)  # -0.0 is the exact identity of addition
    padded[: x.shape[0]] = x
    return np.cumsum(padded.reshape(rows, _LANES), axis=0)[-1].tolist()


def _combine(lanes: list[float]) -> float:
    a = lanes
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


def _repeated_sum(x: np.ndarray, valid: int) -> float:
    """Sum over the row ``x[j % p]``, j < valid: reps whole periods plus a head of x."""
    reps, rest = divmod(valid, x.shape[0])
    return reps * _combine(_lane_sums(x)) + _combine(_lane_sums(x[:rest]))


def _row_stats(seg64: np.ndarray, valid: int) -> tuple[float, float]:
    """(mean, 1 / sqrt(var + eps)) of the row's valid part, variance by two passes."""
    mean = _repeated_sum(seg64, valid) / valid
    dev = seg64 - mean
    var = _repeated_sum(dev * dev, valid) / valid
    return mean, 1.0 / math.sqrt(var + NORM_EPS)
