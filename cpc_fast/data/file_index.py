"""Indexed audio files for pre-training: cheap checks at indexing time, a stable validation
split, and a ``Dataset`` that reads one file per item.

Shared by the LibriSpeech and folder loaders. Files are checked with ``audio_info`` (the
header only, no decoding): an unreadable header, a WAV file shorter than its header says,
no samples, or fewer than ``min_samples`` (at the model's rate) make a :class:`SkippedFile`
with the reason, unless ``strict`` (then :class:`UserInputError` naming the file). Files at
another rate or with several channels are usable (converted when read) and counted in a
:class:`~cpc_fast.data.audio.Conversions`. Reading happens in DataLoader workers, or once
into a prepared corpus (:mod:`cpc_fast.data.prepared`); what fails there is handled by
:mod:`cpc_fast.data.windows`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from torch.utils.data import Dataset

from cpc_fast.data.audio import (
    AudioInfo,
    Conversions,
    audio_info,
    is_environment_error,
    read_audio,
)
from cpc_fast.errors import UserInputError

# Suffixes of the containers the installed libsndfile decodes (MP3 since 1.1, Opus in Ogg).
_SUFFIXES_BY_FORMAT = {
    "WAV": (".wav",),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "AIFF": (".aiff", ".aif"),
    "AU": (".au",),
    "CAF": (".caf",),
    "W64": (".w64",),
}
AUDIO_SUFFIXES = tuple(
    suffix
    for name, suffixes in _SUFFIXES_BY_FORMAT.items()
    if name in sf.available_formats()
    for suffix in suffixes
)


@dataclass(frozen=True)
class AudioItem:
    """One usable utterance: where it is, its id, its speaker (None if unknown), its length."""

    path: str
    utterance_id: str
    speaker: str | None
    num_samples: int


@dataclass(frozen=True)
class SkippedFile:
    """A file left out, and why (one line, naming the problem)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def probe(
    path: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    min_samples: int = 160,
) -> int | str:
    """Checks a file's header: its sample count at ``sample_rate`` if usable, else the
    reason it is not."""
    result = _probe_info(path, sample_rate, min_samples)
    return result if isinstance(result, str) else result.samples_at(sample_rate)


def _probe_info(path: str | os.PathLike, sample_rate: int, min_samples: int) -> AudioInfo | str:
    try:
        info = audio_info(path)
    except (UserInputError, OSError) as exc:
        if is_environment_error(exc):
            raise  # the machine's limits, not the file: never a skip
        return f"unreadable ({_strip_path(str(exc), path)})"
    if info.frames == 0:
        return "empty (no samples)"
    samples = info.samples_at(sample_rate)
    if samples < min_samples:
        at = "" if info.sample_rate == sample_rate else f" at {sample_rate} Hz"
        return f"too short: {samples} samples{at}, the minimum is {min_samples}"
    return info


def _strip_path(message: str, path: str | os.PathLike) -> str:
    """Error messages often start with the path; the warning names it once already."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def check_files(
    candidates: Iterable[tuple[str, str, str | None]],
    *,
    sample_rate: int = 16000,
    min_samples: int = 160,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    conversions: Conversions | None = None,
) -> tuple[list[AudioItem], list[SkippedFile]]:
    """Probes ``(path, utterance_id, speaker)`` candidates.

    Returns the usable items and the skipped files; each skip is passed to ``warn`` (one
    line). With ``strict`` the first bad file raises :class:`UserInputError` instead.
    ``conversions`` counts the usable files that are converted when read.
    """
    items, skipped = [], []
    for path, utterance_id, speaker in candidates:
        result = _probe_info(path, sample_rate, min_samples)
        if isinstance(result, str):
            bad = SkippedFile(str(path), result)
            if strict:
                raise UserInputError(f"{bad} (with `strict=False` it would be skipped)")
            skipped.append(bad)
            if warn is not None:
                warn(f"skipping {bad}")
            continue
        if conversions is not None:
            conversions.add(result)
        items.append(AudioItem(str(path), utterance_id, speaker, result.samples_at(sample_rate)))
    return items, skipped


def is_validation(utterance_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of ids, fixed by a SHA-1 of the id (no RNG, no order)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(utterance_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_items(
    items: Sequence[AudioItem], valid_fraction: float
) -> tuple[list[AudioItem], list[AudioItem]]:
    """(train, valid) by :func:`is_validation` on each utterance id; when that would leave
    nothing to train on (a handful of files), everything trains and nothing validates."""
    train, valid = [], []
    for item in items:
        (valid if is_validation(item.utterance_id, valid_fraction) else train).append(item)
    if not train:
        return valid, []
    return train, valid


class ItemStats:
    """What a corpus of :class:`AudioItem` says about itself, from ``items`` and
    ``sample_rate`` (shared by the files and their prepared copy)."""

    items: Sequence[AudioItem]
    sample_rate: int

    @property
    def speakers(self) -> list[str]:
        """The distinct known speakers, sorted."""
        return sorted({item.speaker for item in self.items if item.speaker is not None})

    @property
    def seconds(self) -> float:
        """Total audio in seconds."""
        return sum(item.num_samples for item in self.items) / self.sample_rate


@dataclass(eq=False)
class AudioFileDataset(ItemStats, Dataset):
    """Reads ``items[i]`` as a 1-D float32 waveform ``(num_samples,)`` at ``sample_rate``.

    Attributes:
        items: the :class:`AudioItem` list, in index order.
        skipped: files left out when indexing (counted in the run summary).
        description: one line saying what this is (recorded in config.json).
        conversions: what reading converts (reported once when a run starts), if counted.
    """

    items: Sequence[AudioItem]
    _: KW_ONLY
    sample_rate: int = 16000
    skipped: Sequence[SkippedFile] = ()
    description: str = ""
    conversions: Conversions | None = None

    def __post_init__(self) -> None:
        self.items, self.skipped = list(self.items), list(self.skipped)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_audio(self.items[index].path, sample_rate=self.sample_rate)

    def fingerprint(self) -> str:
        """A digest of the file list (ids below the root), the sample counts and the file
        sizes: a run resumes only on the same data (the files are not read)."""
        h = hashlib.sha256(f"audio files at {self.sample_rate} Hz\n".encode())
        for item in self.items:
            try:
                size = os.stat(item.path).st_size
            except OSError:  # as os.path.exists treats it: not there
                size = -1
            h.update(f"{item.utterance_id}\t{item.num_samples}\t{size}\n".encode())
        return h.hexdigest()


def relative_id(path: Path, root: Path) -> str:
    """The path below ``root`` without its suffix, '/'-separated: a stable utterance id."""
    return path.relative_to(root).with_suffix("").as_posix()


__all__ = [
    "AUDIO_SUFFIXES",
    "AudioFileDataset",
    "AudioItem",
    "SkippedFile",
    "check_files",
    "is_validation",
    "probe",
    "relative_id",
    "split_items",
]
