"""A prepared corpus: every audio file decoded once, at the model's rate and mono, into
memory-mappable shards that training reads at memory speed.

    prepared = prepare_corpus(dataset, "~/.cache/cpc-fast/prepared", workers=8)
    wave = prepared[i]      # (n,) int16 or float32 view of a memory-mapped shard
    prepared.decoded        # files this call decoded (0 when the cache was complete)

Layout, one folder per corpus under the cache root, named by its key (a digest of the
dataset's fingerprint, the files' modification times, the sample rate and this format)::

    <root>/<key>/shard-00000.i16   64-byte header, then the int16 items back to back
    <root>/<key>/shard-00000.f32   64-byte header, then the float32 items
    <root>/<key>/shard-00000.json  the shard's items: dtype, offset, length, or why unusable
    <root>/<key>/prepared.json     the completion marker (written last): every shard's sizes
    <root>/<key>/.lock             held while a process prepares (others wait for it)

An item is int16 where the file holds 16-bit PCM at the model's rate in mono (nothing is
lost), float32 otherwise (a converted or float file), exactly what :func:`read_audio` gives,
so a window is the same bits with or without the cache. Shards are prepared in worker
processes (a tqdm bar counts files); each file of a shard is written to a temporary name and
renamed, its ``.json`` last, so a killed preparation keeps its finished shards and the next
one builds the rest. ``prepared.json`` is written only when every shard is there: a full disk
or a kill never leaves a cache that passes as complete. Opening checks every shard's size and
header (magic, key, shard number, dtype): a truncated or foreign file is named in a warning
and its shard rebuilt. Files that cannot be decoded keep today's handling: their reason is
recorded, and reading the item raises :class:`~cpc_fast.data.audio.AudioReadError` with it
(:mod:`cpc_fast.data.windows` skips and counts it, or stops with ``strict``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cpc_fast.data.audio import AudioReadError, is_environment_error, read_audio
from cpc_fast.data.file_index import AudioFileDataset, AudioItem, ItemStats
from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write, read_json, write_json
from cpc_fast.io.lock import FolderLock

FORMAT = "cpc-fast prepared corpus v1"
MARKER = "prepared.json"
HEADER_BYTES = 64
_MAGIC = b"CPCPREP1"
_SUFFIX = {"int16": ".i16", "float32": ".f32"}
# A shard is the unit of work and of resumption: small enough that a killed preparation
# loses little and that workers share a small corpus, large enough to keep the file count
# low (LibriSpeech train-clean-100: 28,539 files -> 446 shards).
ITEMS_PER_SHARD = 64


def default_cache_root() -> Path:
    """``$CPC_FAST_CACHE``, else ``$XDG_CACHE_HOME/cpc-fast/prepared``, else
    ``~/.cache/cpc-fast/prepared``."""
    if os.environ.get("CPC_FAST_CACHE"):
        return Path(os.environ["CPC_FAST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cpc-fast" / "prepared"


def cache_key(dataset: AudioFileDataset) -> str:
    """The corpus fingerprint (ids, lengths, sizes) plus each file's modification time: a
    run resumes on data moved elsewhere, but a cache must not serve a file edited in place."""
    h = hashlib.sha256(f"{FORMAT}\n{dataset.sample_rate}\n{dataset.fingerprint()}\n".encode())
    for item in dataset.items:
        try:
            mtime = os.stat(item.path).st_mtime_ns
        except OSError:
            mtime = -1
        h.update(f"{mtime}\n".encode())
    return h.hexdigest()


class PreparedCorpus(ItemStats, Dataset):
    """The items of an :class:`AudioFileDataset`, read from a prepared cache.

    ``corpus[i]`` is the (n,) int16 or float32 waveform at ``sample_rate`` (a view of a
    memory-mapped shard: nothing is decoded or copied), or raises :class:`AudioReadError`
    with the reason the file was unusable when prepared. ``items``, ``skipped``,
    ``description``, ``conversions`` and :meth:`fingerprint` are the source dataset's, so a
    run records the same data with or without the cache.
    """

    checked_finite = True  # every float32 item was checked when prepared

    def __init__(
        self, source: AudioFileDataset, folder: Path, index: dict[str, Any], decoded: int
    ) -> None:
        self.items = list(source.items)
        self.skipped = list(source.skipped)
        self.description = source.description
        self.conversions = source.conversions
        self.sample_rate = source.sample_rate
        self.folder = folder
        self.decoded = decoded
        self._fingerprint = source.fingerprint()
        # per item: (shard, dtype, offset in samples, length) or the reason it is unusable
        self._where: list[tuple[int, str, int, int] | str] = [None] * len(self.items)
        for shard, meta in enumerate(index["shard_items"]):
            for i, entry in meta:
                self._where[i] = entry if isinstance(entry, str) else (shard, *entry)
        self._maps: dict[tuple[int, str], np.memmap] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> np.ndarray:
        where = self._where[index]
        if isinstance(where, str):
            raise AudioReadError(f"{self.items[index].path}: {where}")
        shard, dtype, offset, length = where
        return self._map(shard, dtype)[offset : offset + length]

    def _map(self, shard: int, dtype: str) -> np.memmap:
        key = (shard, dtype)
        if key not in self._maps:  # opened lazily: in each DataLoader worker its own map
            path = self.folder / f"{_shard_name(shard)}{_SUFFIX[dtype]}"
            self._maps[key] = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES)
        return self._maps[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # maps are not pickled: reopened where used

    def fingerprint(self) -> str:
        return self._fingerprint


def prepare_corpus(
    dataset: AudioFileDataset,
    root: str | os.PathLike | None = None,
    *,
    workers: int = 0,
    progress: bool = True,
    info: Callable[[str], None] | None = None,
    items_per_shard: int = ITEMS_PER_SHARD,
) -> PreparedCorpus:
    """``dataset`` decoded once into the cache under ``root`` (default
    :func:`default_cache_root`), or the complete cache already there.

    ``workers`` processes decode (0: this process). ``info`` receives one-line notes (what
    was reused, rebuilt, waited for). Waits while another process prepares the same corpus.
    A write that fails (a full disk) raises a :class:`UserInputError` naming the file and
    what to do (an error of the machine, such as too many open files, its ``OSError``);
    nothing written so far passes as complete, and the shards already whole are kept.
    """
    if not dataset.items:
        raise UserInputError("nothing to prepare: the dataset has no items")
    say = info or (lambda message: None)
    key = cache_key(dataset)
    folder = Path(root).expanduser() if root is not None else default_cache_root()
    folder = folder / key[:32]
    lock = FolderLock(folder, "prepared corpus")
    try:
        lock.acquire(wait=True, on_wait=say)
        plan = _plan(dataset.items, items_per_shard)
        index = _complete_index(folder, key, plan, say)
        decoded = 0
        if index is None:
            decoded, index = _build(dataset, folder, key, plan, workers, progress, say)
        else:
            say(f"reading the prepared corpus in {folder} (nothing to decode)")
    except OSError as exc:
        raise _cache_error(exc, folder) from exc
    finally:
        lock.release()
    return PreparedCorpus(dataset, folder, index, decoded)


def _cache_error(exc: OSError, folder: Path) -> OSError | UserInputError:
    if is_environment_error(exc) or exc.errno is None:
        return exc
    return UserInputError(
        f"{exc.filename or folder}: cannot write the prepared corpus ({exc.strerror}); free "
        "space there, choose another `cache_dir`, or read the audio as it is (`--no-cache`)"
    )


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _plan(items: Sequence[AudioItem], per_shard: int) -> list[list[int]]:
    """Item indices of each shard: consecutive runs of ``per_shard``."""
    return [list(range(i, min(i + per_shard, len(items)))) for i in range(0, len(items), per_shard)]


def _header(key: str, shard: int, dtype: str) -> bytes:
    header = _MAGIC + dtype.encode().ljust(8, b"\0") + struct.pack("<Q", shard)
    return (header + bytes.fromhex(key)).ljust(HEADER_BYTES, b"\0")


def _shard_problem(folder: Path, key: str, shard: int, meta: dict[str, Any]) -> str | None:
    """Why shard ``shard``'s data files do not match ``meta`` (missing, truncated, foreign),
    or None."""
    for dtype, size in meta["bytes"].items():
        path = folder / f"{_shard_name(shard)}{_SUFFIX[dtype]}"
        try:
            with open(path, "rb") as fh:
                header = fh.read(HEADER_BYTES)
                actual = os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            return f"{path} is missing"
        if header != _header(key, shard, dtype):
            return f"{path} is not this corpus's shard (a foreign or damaged file)"
        if actual != size:
            return f"{path} holds {actual} bytes, {size} expected (a truncated file)"
    return None


def _shard_meta(folder: Path, key: str, shard: int, items: list[int]) -> dict | None:
    """Shard ``shard``'s record if it is complete and its data files check out."""
    try:
        meta = read_json(folder / f"{_shard_name(shard)}.json")
    except (FileNotFoundError, UserInputError):
        return None
    if meta.get("key") != key or [i for i, _ in meta.get("items", [])] != items:
        return None
    return meta if _shard_problem(folder, key, shard, meta) is None else None


def _complete_index(
    folder: Path, key: str, plan: list[list[int]], say: Callable[[str], None]
) -> dict[str, Any] | None:
    """The marker's index when the cache is complete and every shard checks out."""
    try:
        index = read_json(folder / MARKER)
    except FileNotFoundError:
        return None
    except UserInputError as exc:
        say(f"rebuilding the prepared corpus: {exc}")
        return None
    if (
        index.get("format") != FORMAT
        or index.get("key") != key
        or len(index["shards"]) != len(plan)
    ):
        say(f"rebuilding the prepared corpus: {folder / MARKER} is not this corpus's")
        return None
    for shard, meta in enumerate(index["shards"]):
        problem = _shard_problem(folder, key, shard, meta)
        if problem is not None:
            say(f"rebuilding the prepared corpus: {problem}")
            (folder / MARKER).unlink()
            return None
    return index


def _build(
    dataset: AudioFileDataset,
    folder: Path,
    key: str,
    plan: list[list[int]],
    workers: int,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[int, dict[str, Any]]:
    """Builds the missing shards, then writes the marker. Returns (files decoded, index)."""
    (folder / MARKER).unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):  # a killed writer's temporary files (we hold
        stale.unlink(missing_ok=True)  # the lock: no one else is writing)
    metas: list[dict | None] = [_shard_meta(folder, key, s, items) for s, items in enumerate(plan)]
    todo = [s for s, meta in enumerate(metas) if meta is None]
    if len(todo) < len(plan):
        done = len(plan) - len(todo)
        say(f"resuming the preparation in {folder}: {done} of {len(plan)} shards done")
    tasks = [
        (str(folder), key, s, [(i, dataset.items[i].path) for i in plan[s]], dataset.sample_rate)
        for s in todo
    ]
    total = sum(len(plan[s]) for s in todo)
    start = time.perf_counter()
    with tqdm(
        total=total, desc="preparing the corpus", unit="file", disable=not progress, leave=False
    ) as bar:
        if workers <= 0 or len(tasks) <= 1:
            for task in tasks:
                metas[task[2]] = _build_shard(task)
                bar.update(len(task[3]))
        else:
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            )
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
                futures = {pool.submit(_build_shard, task): task for task in tasks}
                try:
                    for future in as_completed(futures):
                        task = futures[future]
                        metas[task[2]] = future.result()
                        bar.update(len(task[3]))
                except BaseException:  # a full disk in one worker: stop the others' queue
                    pool.shutdown(cancel_futures=True)
                    raise
    index = {
        "format": FORMAT,
        "key": key,
        "sample_rate": dataset.sample_rate,
        "shards": [{"bytes": meta["bytes"]} for meta in metas],
        "shard_items": [meta["items"] for meta in metas],
    }
    write_json(folder / MARKER, index)  # last: only now is the cache complete
    seconds = sum(dataset.items[i].num_samples for s in todo for i in plan[s])
    elapsed = time.perf_counter() - start
    say(
        f"prepared {total} files ({seconds / dataset.sample_rate / 3600:.2f} h of audio) in "
        f"{elapsed:.1f} s into {folder}"
    )
    return total, index


def _build_shard(task: tuple[str, str, int, list[tuple[int, str]], int]) -> dict[str, Any]:
    """Decodes one shard's files and writes its data files, then its record (a worker)."""
    folder, key, shard, files, sample_rate = task
    folder = Path(folder)
    arrays: dict[str, list[np.ndarray]] = {"int16": [], "float32": []}
    offsets = {"int16": 0, "float32": 0}
    items: list[tuple[int, list | str]] = []
    for i, path in files:
        try:
            wave = read_audio(path, sample_rate=sample_rate, dtype="auto")
        except (UserInputError, OSError) as exc:
            if is_environment_error(exc):
                raise  # the machine's limits, not the file
            items.append((i, _strip(str(exc), path)))
            continue
        dtype = str(wave.dtype)
        items.append((i, [dtype, offsets[dtype], int(wave.shape[0])]))
        arrays[dtype].append(wave)
        offsets[dtype] += wave.shape[0]
    sizes = {}
    for dtype, waves in arrays.items():
        path = folder / f"{_shard_name(shard)}{_SUFFIX[dtype]}"
        header = _header(key, shard, dtype)

        def write(tmp: str, header: bytes = header, waves: list = waves) -> None:
            with open(tmp, "wb") as fh:
                fh.write(header)
                for wave in waves:
                    wave.tofile(fh)

        atomic_write(path, write)
        sizes[dtype] = HEADER_BYTES + offsets[dtype] * np.dtype(dtype).itemsize
    meta = {"key": key, "bytes": sizes, "items": items}
    write_json(folder / f"{_shard_name(shard)}.json", meta)
    return json.loads(json.dumps(meta))  # as read back: lists, not tuples


def _strip(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


__all__ = [
    "ITEMS_PER_SHARD",
    "PreparedCorpus",
    "cache_key",
    "default_cache_root",
    "prepare_corpus",
]
