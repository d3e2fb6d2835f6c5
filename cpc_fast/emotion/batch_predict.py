"""Predicting many audio files in batches: what ``cpc-fast predict`` runs.

    clips = index_files(paths)                      # headers only: lengths, conversions
    for result in predict_clips(model.predict_batch, clips):
        ...                                         # Result(clip, values (3,) or error)

The files' headers are read first (cheap), so a file that cannot be opened is named before
any work, and the files are cut into batches of similar length (sorted by length, so little
of a batch is padding): at most ``max_items`` files and ``max_samples`` padded samples a
batch; a longer file runs alone, as one file always did, so an hour of audio costs what it
cost before. A thread decodes the next batches while the model runs the current one
(soundfile and soxr release the GIL). A zero-padded batch gives each file what it gives
alone (:class:`~cpc_fast.emotion.model_io.EmotionModel`), so batching changes no result
beyond float rounding.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpc_fast.data.audio import Conversions, audio_info, is_environment_error, read_audio
from cpc_fast.data.corpora.folder import find_audio
from cpc_fast.data.file_index import AUDIO_SUFFIXES
from cpc_fast.errors import UserInputError, naming

MAX_ITEMS = 16  # files a batch
MAX_SAMPLES = 16000 * 160  # padded samples a batch: 160 s of audio
PREFETCH = 2  # batches decoded ahead
MANIFEST_SUFFIXES = (".csv", ".txt", ".lst")

Predictor = Callable[[Sequence[np.ndarray]], np.ndarray]  # N waveforms -> (N, 3)


@dataclass(frozen=True)
class Clip:
    """One input file: where it is and how many samples its header promises at the
    model's rate (0 when the header cannot be read: ``error`` says why)."""

    path: Path
    samples: int
    error: str | None = None


@dataclass(frozen=True)
class Result:
    clip: Clip
    values: np.ndarray | None  # (3,) float64, None on error
    error: str | None = None


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Each input as the audio files it stands for, in order: a file as itself, a folder as
    every audio file below it (sorted), a manifest (``.csv`` with a ``path`` column, or
    ``.txt``/``.lst`` with one path a line; relative paths from the manifest's folder) as
    its files. A missing manifest is a :class:`UserInputError` naming it; a missing file
    stays in the list, to be named (and skipped, if asked) as a file that cannot be read."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = find_audio(path)
            if not found:
                raise UserInputError(f"{path}: no audio files in this folder tree")
            files += found
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.suffix.lower() not in AUDIO_SUFFIXES:
            files += _manifest_files(path)
        else:
            files.append(path)
    return files


def _manifest_files(manifest: Path) -> list[Path]:
    if not manifest.is_file():
        raise UserInputError(f"{manifest}: no such manifest")
    base = manifest.resolve().parent
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        if manifest.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if "path" not in fields:
                raise UserInputError(f"{manifest}: no `path` column (its header: {fields})")
            names = [(row.get("path") or "").strip() for row in reader]
        else:
            names = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    if not names:
        raise UserInputError(f"{manifest}: lists no files")
    for line, name in enumerate(names, start=2 if manifest.suffix.lower() == ".csv" else 1):
        if not name:
            raise UserInputError(f"{manifest}:{line}: empty path")
    return [Path(name) if Path(name).is_absolute() else base / name for name in names]


def index_files(
    paths: Sequence[Path], sample_rate: int, conversions: Conversions | None = None
) -> list[Clip]:
    """Each file's header: its length at ``sample_rate``, or the error that names it
    (counted in ``conversions`` when readable)."""
    clips = []
    for path in paths:
        try:
            info = audio_info(path)
        except OSError as exc:
            if is_environment_error(exc):
                raise  # the machine's problem (too many open files), not the file's
            clips.append(Clip(path, 0, naming(str(path), str(exc))))
            continue
        except UserInputError as exc:
            clips.append(Clip(path, 0, naming(str(path), str(exc))))
            continue
        if conversions is not None:
            conversions.add(info)
        clips.append(Clip(path, info.samples_at(sample_rate)))
    return clips


def plan_batches(
    lengths: Sequence[int], *, max_items: int = MAX_ITEMS, max_samples: int = MAX_SAMPLES
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into batches of at most ``max_items``
    whose padded size (rows x the longest) is at most ``max_samples``; a file longer than
    that is a batch of its own. Longest first, so that a batch too large for memory fails
    at once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # Sorted longest first: the batch's first file is its longest.
        if (
            batch is not None
            and len(batch) < max_items
            and (len(batch) + 1) * lengths[batch[0]] <= max_samples
        ):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def predict_clips(
    predict: Predictor,
    clips: Sequence[Clip],
    *,
    sample_rate: int,
    min_samples: int,
    max_items: int = MAX_ITEMS,
    max_samples: int = MAX_SAMPLES,
    workers: int = 1,
    use_threads: Callable[[int], None] | None = None,
    on_batch: Callable[[float], None] | None = None,
) -> Iterator[Result]:
    """The prediction of every readable clip, a batch at a time (in batch order, not the
    clips' order); a clip whose header, audio or prediction fails gets a Result with its
    ``error``. ``on_batch(seconds)`` is called after each batch with its audio seconds.

    Files longer than a batch may hold run first, one at a time, with ``use_threads
    (workers)`` (the predictor's threads, e.g. ``torch.set_num_threads``): each uses every
    core. Then ``workers`` batches run at once, each on one thread (``use_threads(1)``):
    on a CPU, independent batches on one core each get more done than every core on one
    batch (on a 2-core EPYC, 20 % more). A thread decodes the next batches meanwhile; at
    most ``workers + PREFETCH`` batches are in memory.
    """
    for clip in clips:
        if clip.error is not None:
            yield Result(clip, None, clip.error)
    readable = [c for c in clips if c.error is None]
    lengths = [c.samples for c in readable]
    batches = plan_batches(lengths, max_items=max_items, max_samples=max_samples)
    long = [b for b in batches if len(b) == 1 and lengths[b[0]] > max_samples]
    rest = batches[len(long) :]  # longest first: the long files come first

    def run(batch: list[int], waves: list[np.ndarray | UserInputError]) -> list[Result]:
        results = [
            Result(readable[i], None, str(w))
            for i, w in zip(batch, waves, strict=True)
            if not isinstance(w, np.ndarray)
        ]
        good = [(i, w) for i, w in zip(batch, waves, strict=True) if isinstance(w, np.ndarray)]
        if good:
            values = predict([w for _, w in good])
            for (i, _), row in zip(good, values, strict=True):
                clip = readable[i]
                if np.isfinite(row).all():
                    results.append(Result(clip, row))
                else:
                    why = f"{clip.path}: the prediction is not finite ({row.tolist()})"
                    results.append(Result(clip, None, why))
        if on_batch is not None:
            on_batch(sum(lengths[i] for i in batch) / sample_rate)
        return results

    def decode(batch: list[int]) -> list[np.ndarray | UserInputError]:
        return [_read(readable[i], sample_rate, min_samples) for i in batch]

    if use_threads is not None:
        use_threads(workers)
    for batch in long:
        yield from run(batch, decode(batch))
    if not rest:
        return
    if use_threads is not None:
        use_threads(1)
    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
    runners = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict")
    pending: deque[Future] = deque()
    queue = iter(rest)

    def submit_next() -> None:
        batch = next(queue, None)
        if batch is not None:
            decoded = decoder.submit(decode, batch)
            pending.append(runners.submit(lambda: run(batch, decoded.result())))

    try:
        for _ in range(workers + PREFETCH):
            submit_next()
        while pending:
            results = pending.popleft().result()
            submit_next()
            yield from results
    finally:  # a consumer that stops (an error without skip_bad) leaves no work running
        for pool in (runners, decoder):
            pool.shutdown(wait=True, cancel_futures=True)


def too_short(samples: int, min_samples: int) -> str:
    """What is wrong with audio of fewer than ``min_samples`` samples (one frame's worth:
    160 for the LFBE and CPC front ends, the receptive field of an SSL upstream's first)."""
    if min_samples <= 160:
        return f"audio of {samples} samples is shorter than one 10 ms frame"
    return f"audio of {samples} samples is shorter than the model's first frame ({min_samples})"


def _read(clip: Clip, sample_rate: int, min_samples: int) -> np.ndarray | UserInputError:
    """The clip's waveform, or the error that names it (returned: the decoding thread
    hands it to the loop, which reports it in order)."""
    try:
        wave = read_audio(clip.path, sample_rate=sample_rate)
    except UserInputError as exc:
        return UserInputError(naming(str(clip.path), str(exc)))
    except OSError as exc:
        if is_environment_error(exc):
            raise
        return UserInputError(naming(str(clip.path), str(exc)))
    if wave.shape[0] < min_samples:
        return UserInputError(f"{clip.path}: {too_short(wave.shape[0], min_samples)}")
    return wave


def total_seconds(clips: Iterable[Clip], sample_rate: int) -> float:
    return sum(c.samples for c in clips) / sample_rate


__all__ = [
    "MAX_ITEMS",
    "MAX_SAMPLES",
    "Clip",
    "Result",
    "expand_inputs",
    "index_files",
    "plan_batches",
    "predict_clips",
    "too_short",
    "total_seconds",
]
