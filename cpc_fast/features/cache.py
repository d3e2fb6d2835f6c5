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

A large entry (the hidden states of a speech SSL model: gigabytes per hour of audio) is
built in parts instead, by any number of processes, each part resumable
(:class:`PartedEntry`): the rows of every utterance are known before any is computed, so
each part's file is allocated at its final size and filled in place, and a log of the
utterances whose rows are on disk lets a killed build go on where it stopped. Such an entry
is stored in the dtype its builder asks for (float16 for SSL features) as ``part-*.bin``
files that ``meta.json``, written last, lists:

    <cache_dir>/<kind>-<key>/
        layout.json          the plan every builder follows: parts, rows, dim, dtype
        part-00000.bin       (rows of part 0, dim) in the entry's dtype, once complete
        part-00001.partial   ... part 1 while it is being filled, and
        part-00001.done      the utterances of part 1 whose rows are on disk
        offsets.npy, meta.json   written last, when every part is complete
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import folder_mode, write_json
from cpc_fast.io.claims import process_alive
from cpc_fast.io.lock import FolderLock

CACHE_VERSION = 1
_DTYPE = np.float32
_DTYPES = ("float32", "float16")
COMMIT_SECONDS = 10.0  # how often a part's build makes its rows durable and logs them


class FeatureSet:
    """Per-utterance (L_i, D) features (float32, or float16 for SSL hidden states) backed by
    one array, or by consecutive blocks of whole utterances (an entry built in parts), and
    offsets."""

    def __init__(
        self,
        data: np.ndarray | Sequence[np.ndarray],
        offsets: np.ndarray,
        path: Path | None = None,
    ) -> None:
        blocks = [data] if isinstance(data, np.ndarray) else list(data)
        starts = np.cumsum([0] + [b.shape[0] for b in blocks])  # (blocks + 1,) first rows
        if (
            not blocks
            or any(b.ndim != 2 or b.shape[1] != blocks[0].shape[1] for b in blocks)
            or offsets.ndim != 1
            or offsets[-1] != starts[-1]
            or not np.isin(starts, offsets).all()  # no utterance straddles two blocks
        ):
            raise ValueError("offsets do not describe the feature array")
        self.blocks = blocks  # each (rows_b, D)
        self.offsets = offsets  # (N + 1,)
        self.path = path
        self._starts = starts

    @property
    def data(self) -> np.ndarray:
        """(total_frames, D): the one array (an entry built in parts has :attr:`blocks`)."""
        if len(self.blocks) != 1:
            raise ValueError(f"{self.path}: features in {len(self.blocks)} blocks; read blocks")
        return self.blocks[0]

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.blocks[0].shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.blocks[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def __getitem__(self, index: int) -> np.ndarray:
        """(L_i, D) view of utterance ``index``."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if len(self.blocks) == 1:
            return self.blocks[0][start:end]
        block = min(int(np.searchsorted(self._starts, start, "right")) - 1, len(self.blocks) - 1)
        first = int(self._starts[block])
        return self.blocks[block][start - first : end - first]

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
        dtype = np.dtype(meta.get("dtype", "float32"))
        files = [(b["file"], int(b["rows"])) for b in meta.get("blocks", [])]
        files = files or [("features.bin", rows)]
        sizes = [(path / name).stat().st_size for name, _ in files]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, str(exc)) from None
    if dtype.name not in _DTYPES or sum(r for _, r in files) != rows:
        raise _corrupt(path, "meta.json's dtype or blocks do not add up")
    for (name, block_rows), size in zip(files, sizes, strict=True):
        expected = block_rows * dim * dtype.itemsize
        if size != expected:
            raise _corrupt(path, f"{name} holds {size} bytes, meta.json says {expected}")
    if offsets.shape != (count + 1,) or int(offsets[-1]) != rows or (np.diff(offsets) < 0).any():
        raise _corrupt(path, "offsets.npy does not match meta.json")
    blocks = [
        np.memmap(path / name, dtype=dtype, mode="r", shape=(block_rows, dim))
        if block_rows
        else np.zeros((0, dim), dtype)
        for name, block_rows in files
    ]
    try:
        return FeatureSet(blocks, offsets, path)
    except ValueError:
        raise _corrupt(path, "a block does not end where an utterance does") from None


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


class PartedEntry:
    """An entry built in parts (module docstring): ``frames[i]`` rows of ``dim`` values of
    ``dtype`` for utterance i, the utterances split into consecutive parts.

    Any process may build any part (:meth:`build_part`: one process at a time per part, the
    others wait for it), and a killed build goes on from the utterances it logged; whoever
    finds every part complete writes the entry (:meth:`finish`). The split is fixed by the
    first planner (``layout.json``) and followed by every later one, so all processes agree
    on which utterance is in which part.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        kind: str,
        parts: Mapping[str, Any],
        frames: Sequence[int],
        dim: int,
        *,
        dtype: str = "float16",
        bounds: Sequence[int] | None = None,
    ) -> None:
        """``bounds``: the first utterance of each part, then ``len(frames)`` (default: one
        part); a layout already on disk takes precedence."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.path = entry_path(cache_dir, kind, parts)
        self.kind = kind
        self.parts = dict(parts)
        self.frames = np.asarray(frames, np.int64)  # (N,)
        self.offsets = np.concatenate([[0], np.cumsum(self.frames)]).astype(np.int64)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        planned = list(bounds) if bounds is not None else [0, len(self.frames)]
        self.path.mkdir(parents=True, exist_ok=True)
        self.bounds = self._layout(planned)

    def _layout(self, planned: list[int]) -> list[int]:
        """The part bounds on disk, or ``planned`` written there first (under the entry's
        lock, so that two first planners agree)."""
        layout = {
            "key": cache_key({"kind": self.kind, **self.parts}),
            "count": len(self.frames),
            "rows": int(self.offsets[-1]),
            "dim": self.dim,
            "dtype": self.dtype.name,
        }
        saved = self._saved_bounds(layout)
        if saved is not None or self.complete():
            return saved or planned
        if (
            planned[0] != 0
            or planned[-1] != len(self.frames)
            or any(b <= a for a, b in zip(planned, planned[1:], strict=False))
        ):
            raise ValueError(f"part bounds {planned} do not split {len(self.frames)} utterances")
        with FolderLock(self.path, "feature cache entry"):
            saved = self._saved_bounds(layout)
            if saved is not None:
                return saved
            for stale in self.path.glob("part-*"):  # of another layout: meaningless here
                stale.unlink()
            write_json(self.path / "layout.json", {**layout, "bounds": planned})
        return planned

    def _saved_bounds(self, layout: dict[str, Any]) -> list[int] | None:
        try:
            saved = json.loads((self.path / "layout.json").read_text())
            if {k: saved.get(k) for k in layout} == layout:
                return [int(b) for b in saved["bounds"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    @property
    def num_parts(self) -> int:
        return len(self.bounds) - 1

    def part(self, k: int) -> range:
        """The utterances of part ``k``."""
        return range(self.bounds[k], self.bounds[k + 1])

    def complete(self) -> bool:
        return (self.path / "meta.json").is_file()

    def open(self) -> FeatureSet:
        return open_entry(self.path)

    def _part_file(self, k: int, suffix: str) -> Path:
        return self.path / f"part-{k:05d}.{suffix}"

    def _part_rows(self, k: int) -> int:
        return int(self.offsets[self.bounds[k + 1]] - self.offsets[self.bounds[k]])

    def part_done(self, k: int) -> bool:
        path = self._part_file(k, "bin")
        expected = self._part_rows(k) * self.dim * self.dtype.itemsize
        return path.is_file() and path.stat().st_size == expected

    def logged(self, k: int) -> set[int]:
        """The utterances of part ``k`` whose rows are on disk (a torn last line, from a
        kill during the append, is not counted)."""
        try:
            text = self._part_file(k, "done").read_text()
        except FileNotFoundError:
            return set()
        lines = text.split("\n")[:-1]  # the last piece has no newline: torn or empty
        return {int(line) for line in lines if line.strip().isdigit()}

    def build_part(
        self,
        k: int,
        compute: Callable[[list[int]], Iterator[tuple[int, np.ndarray]]],
        *,
        on_resume: Callable[[int, int], None] | None = None,
    ) -> None:
        """Fills part ``k``: ``compute(indices)`` yields ``(i, (frames[i], dim) array)`` for
        each of the given utterances, in any order. Utterances already logged are not asked
        for again (``on_resume(logged, total)`` is told how many); rows reach the disk and
        the log every :data:`COMMIT_SECONDS`, and the part file gets its final name when
        every utterance is in."""
        if self.complete() or self.part_done(k):
            return
        lock = FolderLock(self.path / f".part-{k:05d}", "feature cache part")
        lock.acquire(wait=True)
        try:
            if not self.part_done(k):
                self._fill(k, compute, on_resume)
        finally:
            lock.release()

    def _fill(
        self,
        k: int,
        compute: Callable[[list[int]], Iterator[tuple[int, np.ndarray]]],
        on_resume: Callable[[int, int], None] | None,
    ) -> None:
        rows = self._part_rows(k)
        first_row = int(self.offsets[self.bounds[k]])
        partial, log = self._part_file(k, "partial"), self._part_file(k, "done")
        expected = rows * self.dim * self.dtype.itemsize
        if not partial.is_file() or partial.stat().st_size != expected:
            log.unlink(missing_ok=True)  # a log describes its own data file only
            with open(partial, "wb") as fh:
                fh.truncate(expected)  # sparse until written
        done = self.logged(k)
        _drop_torn_line(log)
        todo = [i for i in self.part(k) if i not in done]
        if done and on_resume is not None:
            on_resume(len(done), len(self.part(k)))
        if todo:
            data = (
                np.memmap(partial, dtype=self.dtype, mode="r+", shape=(rows, self.dim))
                if rows
                else np.zeros((0, self.dim), self.dtype)  # nothing to map
            )
            pending: list[int] = []
            last_commit = time.monotonic()
            with open(log, "a") as fh:
                for i, x in compute(todo):
                    x = np.asarray(x)
                    if x.shape != (self.frames[i], self.dim):
                        raise ValueError(
                            f"utterance {i}: features of shape {x.shape}, expected "
                            f"({self.frames[i]}, {self.dim})"
                        )
                    start = int(self.offsets[i]) - first_row
                    data[start : start + x.shape[0]] = x
                    pending.append(i)
                    if time.monotonic() - last_commit > COMMIT_SECONDS:
                        _commit(data, fh, pending)
                        last_commit = time.monotonic()
                _commit(data, fh, pending)
            del data
            missing = set(self.part(k)) - self.logged(k)
            if missing:
                raise ValueError(f"part {k}: no features computed for utterances {sorted(missing)}")
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, self._part_file(k, "bin"))
        log.unlink(missing_ok=True)

    def finish(self) -> FeatureSet:
        """Writes the entry once every part is complete (``offsets.npy``, then ``meta.json``);
        returns it. Raises naming the parts still missing."""
        if self.complete():
            return self.open()
        missing = [k for k in range(self.num_parts) if not self.part_done(k)]
        if missing:
            raise ValueError(f"{self.path}: parts {missing} of the feature cache are not built")
        with FolderLock(self.path, "feature cache entry"):
            if not self.complete():
                np.save(self.path / "offsets.npy", self.offsets)
                meta = {
                    "key": cache_key({"kind": self.kind, **self.parts}),
                    "kind": self.kind,
                    "parts": self.parts,
                    "rows": int(self.offsets[-1]),
                    "dim": self.dim,
                    "count": len(self.frames),
                    "dtype": self.dtype.name,
                    "blocks": [
                        {"file": self._part_file(k, "bin").name, "rows": self._part_rows(k)}
                        for k in range(self.num_parts)
                    ],
                }
                write_json(self.path / "meta.json", meta)  # last: now the entry is complete
                for k in range(self.num_parts):  # the parts' empty lock folders
                    try:
                        (self.path / f".part-{k:05d}").rmdir()
                    except OSError:
                        pass
        return self.open()


def _drop_torn_line(log: Path) -> None:
    """Cuts what follows the last newline of ``log`` (a line a kill tore), so that lines
    appended next stay whole."""
    try:
        text = log.read_bytes()
    except FileNotFoundError:
        return
    if text and not text.endswith(b"\n"):
        os.truncate(log, text.rfind(b"\n") + 1)


def _commit(data: np.ndarray, log, pending: list[int]) -> None:
    """Rows before log lines: the data of every utterance in the log is on disk."""
    if not pending:
        return
    if isinstance(data, np.memmap):
        data.flush()
    log.write("".join(f"{i}\n" for i in pending))
    log.flush()
    os.fsync(log.fileno())
    pending.clear()


__all__ = [
    "CACHE_VERSION",
    "COMMIT_SECONDS",
    "FeatureSet",
    "PartedEntry",
    "cache_key",
    "cached_features",
    "entry_path",
    "frame_statistics",
    "module_digest",
    "open_entry",
    "remove_stale_temporaries",
]
