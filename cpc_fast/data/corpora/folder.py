"""Any folder tree of audio files (.wav, .flac, .ogg, .opus, .mp3, ... as the installed
soundfile decodes) as unlabeled pre-training audio.

Files are found recursively (suffixes in any case), sorted by their path below ``root``,
which also serves as the utterance id for the validation split (a hash of the id, so the
split does not change when files are added elsewhere in the tree). No speaker is assumed.
Any rate and channel count is read (averaged to mono, resampled); bad files are skipped
with a warning (or stop the run with ``strict``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cpc_fast.data.audio import Conversions
from cpc_fast.data.file_index import (
    AUDIO_SUFFIXES,
    AudioFileDataset,
    check_files,
    relative_id,
    split_items,
)
from cpc_fast.errors import UserInputError


def find_audio(root: str | os.PathLike) -> list[Path]:
    """Every audio file under ``root`` (or ``root`` itself if it is one), sorted."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in AUDIO_SUFFIXES:
            raise UserInputError(f"{root}: not an audio file ({_suffixes()})")
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def load_folder(
    root: str | os.PathLike,
    *,
    valid_fraction: float = 0.02,
    sample_rate: int = 16000,
    min_samples: int = 160,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[AudioFileDataset, AudioFileDataset]:
    """Indexes the audio under ``root`` (headers only) -> (train, valid) datasets."""
    root = Path(root)
    paths = find_audio(root)
    if not paths:
        raise UserInputError(f"{root}: no audio files in this folder tree ({_suffixes()})")
    base = root.parent if root.is_file() else root
    candidates = [(str(p), relative_id(p, base), None) for p in paths]
    conversions = Conversions(sample_rate)
    items, skipped = check_files(
        candidates,
        sample_rate=sample_rate,
        min_samples=min_samples,
        strict=strict,
        warn=warn,
        conversions=conversions,
    )
    train, valid = split_items(items, valid_fraction)
    if not train:
        raise UserInputError(f"{root}: no usable training files ({len(skipped)} skipped)")
    return (
        AudioFileDataset(
            train,
            sample_rate=sample_rate,
            skipped=skipped,
            description=f"folder {root}",
            conversions=conversions,
        ),
        AudioFileDataset(valid, sample_rate=sample_rate, description=f"folder {root} (validation)"),
    )


def _suffixes() -> str:
    return ", ".join(AUDIO_SUFFIXES)


__all__ = ["find_audio", "load_folder"]
