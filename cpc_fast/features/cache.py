"""On-disk cache of per-utterance feature sequences, so 50 epochs x 5 runs never recompute them.

An entry is keyed by everything the features depend on: the feature kind and its parameters,
the dataset's fingerprint (:meth:`EmotionCorpus.fingerprint`: its audio) and, for CPC
contexts, a digest of the model's weights (:func:`module_digest`). Change any of them and
the key changes, so a stale entry is never read. An entry is a folder

    <cache_dir>/<kind>-<first 20 hex digits of the key>/
        features.bin   all frames, (total_frames, dim) float32, row-major, utterance after
                       utterance
        offsets.npy    (N + 1,) int64: utterance i is rows offsets[i]:offsets[i + 1]
        meta.json      the full key and its parts, shapes, dtype

built in a temporary folder ``.<entry>.<host>.<pid>.<random>`` and renamed into place
(atomic on POSIX), so a crash leaves no half-written entry; the temporary folder is removed
on any error or interruption, and one left by a killed process on this host is removed by
the next build. Reading memory-maps ``features.bin`` after checking that the entry's files
agree with each other: a damaged entry is an error naming it, never wrong features.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import folder_mode
from cpc_fast.io.claims import process_alive

CACHE_VERSION = 1
_DTYPE = np.float32


class FeatureSet:
    """Per-utterance (L_i, D) float32 features backed by one array and offsets."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, path: Path | None = None) -> None:
        if data.ndim != 2 or offsets.ndim != 1 or offsets[-1] != data.shape[0]:
            raise ValueError("offsets do not describe the feature array")
        self.data = data  # (total_frames, D)
        self.offsets = offsets  # (N + 1,)
        self.path = path

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, index: int) -> np.ndarray:
        """(L_i, D) view of utterance ``index``."""
        return self.data[self.offsets[index] : self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        """(N,) frame counts."""
        return np.diff(self.offsets)

    def mean_std(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std over every frame of the given utterances: (D,), (D,)."""
        return frame_statistics(self[i] for i in indices)


def frame_statistics(sequences: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std per dimension over all frames of (L_i, D) arrays, in float64."""
    total = squares = None
    count = 0
    for x in sequences:
        x = np.asarray(x, dtype=np.float64)
        if total is None:
            total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += x.shape[0]
    if total is None or count == 0:
        raise ValueError("no frames to compute statistics from")
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (plus the cache format version)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def entry_path(cache_dir: str | os.PathLike, kind: str, parts: Mapping[str, Any]) -> Path:
    return Path(cache_dir) / f"{kind}-{cache_key({'kind': kind, **parts})[:20]}"


def open_entry(path: Path) -> FeatureSet:
    """The entry at ``path``; :class:`UserInputError` naming it when its files disagree."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        offsets = np.load(path / "offsets.npy")
        rows, dim, count = int(meta["rows"]), int(meta["dim"]), int(meta["count"])
        size = (path / "features.bin").stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, str(exc)) from None
    expected = rows * dim * np.dtype(_DTYPE).itemsize
    if size != expected:
        raise _corrupt(path, f"features.bin holds {size} bytes, meta.json says {expected}")
    if offsets.shape != (count + 1,) or int(offsets[-1]) != rows or (np.diff(offsets) < 0).any():
        raise _corrupt(path, "offsets.npy does not match meta.json")
    if rows == 0:
        data = np.zeros((0, dim), _DTYPE)
    else:
        data = np.memmap(path / "features.bin", dtype=_DTYPE, mode="r", shape=(rows, dim))
    return FeatureSet(data, offsets, path)


def _corrupt(path: Path, why: str) -> UserInputError:
    return UserInputError(
        f"{path}: a damaged feature-cache entry ({why}); delete this folder and it is rebuilt"
    )


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{socket.gethostname()}."


def remove_stale_temporaries(final: Path) -> None:
    """Removes what killed builds of ``final`` on this host left behind (their process is
    gone); another host's, or a live process's, are left alone."""
    prefix = _temp_prefix(final)
    for tmp in final.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix) :].partition(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def cached_features(
    cache_dir: str | os.PathLike,
    kind: str,
    parts: Mapping[str, Any],
    count: int,
    extract: Callable[[int], np.ndarray],
    *,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> FeatureSet:
    """The features of ``count`` utterances, from the cache or computed and stored.

    Args:
        cache_dir: folder holding the entries (created when missing).
        kind: a short name for the folder ("lfbe", "cpc").
        parts: everything the features depend on (JSON-serialisable).
        count: number of utterances.
        extract: ``extract(i) -> (L_i, D)`` array for utterance i; called only on a miss.
        progress: wraps the utterance loop (a tqdm) when given.
    """
    final = entry_path(cache_dir, kind, parts)
    if (final / "meta.json").is_file():
        return open_entry(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    prefix = f"{_temp_prefix(final)}{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        os.chmod(tmp, folder_mode())  # mkdtemp makes it 0700
        offsets = np.zeros(count + 1, np.int64)
        dim = None
        with open(tmp / "features.bin", "wb") as fh:
            loop = range(count) if progress is None else progress(range(count))
            for i in loop:
                x = np.ascontiguousarray(extract(i), dtype=_DTYPE)
                if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
                    raise ValueError(f"utterance {i}: features of shape {x.shape}, expected (L, D)")
                dim = x.shape[1]
                fh.write(x.tobytes())
                offsets[i + 1] = offsets[i] + x.shape[0]
            fh.flush()
            os.fsync(fh.fileno())
        np.save(tmp / "offsets.npy", offsets)
        meta = {
            "key": cache_key({"kind": kind, **parts}),
            "kind": kind,
            "parts": dict(parts),
            "rows": int(offsets[-1]),
            "dim": int(dim or 0),
            "count": count,
            "dtype": np.dtype(_DTYPE).name,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same entry first; theirs is identical.
            if not (final / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_entry(final)


__all__ = [
    "CACHE_VERSION",
    "FeatureSet",
    "cache_key",
    "cached_features",
    "entry_path",
    "frame_statistics",
    "module_digest",
    "open_entry",
    "remove_stale_temporaries",
]
