"""The corpora, one module each in its public on-disk layout, and the registry that opens them.

Unlabelled audio for CPC pre-training, :func:`open_pretrain_corpus` (``cpc-fast pretrain``):

    librispeech   LibriSpeech subsets (train-clean-100 by default)     corpora.librispeech
    folder        any tree of audio files (.wav/.flac/.ogg/.mp3/...)   corpora.folder
    synthetic     the built-in speech-like corpus                       corpora.synthetic_speech

Labelled emotion corpora, :func:`open_emotion_corpus` (``cpc-fast experiment``, ``visualize``):

    iemocap       IEMOCAP_full_release, leave-one-session-out          corpora.iemocap
    msp-podcast   MSP-Podcast, its official split                       corpora.msp_podcast
    manifest      a CSV of the user's own labelled files                corpora.manifest
    synthetic     the built-in IEMOCAP-like corpus                      corpora.synthetic_emotion

Bad arguments raise :class:`~cpc_fast.errors.UserInputError` naming them in backticks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torch.utils.data import Dataset

from cpc_fast.data.corpora.folder import load_folder
from cpc_fast.data.corpora.iemocap import load_iemocap
from cpc_fast.data.corpora.librispeech import load_librispeech, looks_like_librispeech
from cpc_fast.data.corpora.manifest import load_manifest
from cpc_fast.data.corpora.msp_podcast import load_msp_podcast
from cpc_fast.data.corpora.synthetic_emotion import SYNTHETIC_SIZES, load_synthetic
from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.data.labelled import EmotionCorpus
from cpc_fast.errors import UserInputError

PRETRAIN_FORMATS = ("librispeech", "folder", "synthetic")
EMOTION_DATASETS = ("iemocap", "msp-podcast", "manifest", "synthetic")


class CorpusSource(NamedTuple):
    """Where pre-training audio came from, resolved: the format and the absolute path (None
    for the built-in corpus)."""

    format: str
    path: str | None


def detect_format(path: str | os.PathLike) -> str:
    """ "librispeech" when ``path`` is (or holds) the LibriSpeech layout, else "folder"."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (`path`)")
    return "librispeech" if looks_like_librispeech(path) else "folder"


def open_pretrain_corpus(
    path: str | os.PathLike | None = None,
    format: str | None = None,  # noqa: A002 - the name the configuration and CLI use
    *,
    subset: str | None = None,
    max_minutes_per_speaker: float | None = None,
    valid_fraction: float = 0.02,
    synthetic_speakers: int = 24,
    synthetic_utterances: int = 60,
    synthetic_valid_utterances: int = 2,
    synthetic_seconds: tuple[float, float] = (4.0, 14.0),
    seed: int = 0,
    sample_rate: int = 16000,
    min_samples: int = 160,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[Dataset, Dataset, CorpusSource]:
    """The training and validation sets of unlabelled audio, and where they came from.

    ``path`` None is the built-in synthetic corpus (``synthetic_*`` size it, ``seed`` seeds
    it); otherwise ``format`` (detected when None) is "librispeech" or "folder", indexed from
    the files' headers: bad files are skipped and reported through ``warn`` (or, with
    ``strict``, raise naming the file). The arguments are the fields of
    :class:`cpc_fast.config.pretrain.DataConfig`, plus how to index.
    """
    if format is not None and format not in PRETRAIN_FORMATS:
        raise UserInputError(
            f"`format` must be one of {', '.join(PRETRAIN_FORMATS)}, got {format!r}"
        )
    if path is None:
        if format not in (None, "synthetic"):
            raise UserInputError(f"`format` {format} needs `path=PATH`")
        train = SyntheticSpeechCorpus(
            synthetic_speakers,
            synthetic_utterances,
            synthetic_seconds,
            seed,
            sample_rate=sample_rate,
        )
        source = CorpusSource("synthetic", None)
        return train, train.held_out(synthetic_valid_utterances), source
    if format == "synthetic":
        raise UserInputError("`format` synthetic is the built-in corpus: drop `path`")
    source = CorpusSource(format or detect_format(path), str(Path(path).resolve()))
    common = dict(
        valid_fraction=valid_fraction,
        sample_rate=sample_rate,
        min_samples=min_samples,
        strict=strict,
        warn=warn,
    )
    if source.format == "librispeech":
        corpus = load_librispeech(
            path, subset=subset, max_minutes_per_speaker=max_minutes_per_speaker, **common
        )
        return corpus.train, corpus.valid, source
    if max_minutes_per_speaker is not None or subset is not None:
        raise UserInputError(
            "`max_minutes_per_speaker` and `subset` apply to LibriSpeech, not to a folder"
        )
    train, valid = load_folder(path, **common)
    return train, valid, source


def open_emotion_corpus(
    dataset: str,
    root: str | os.PathLike | None = None,
    *,
    subset: str = "paper",
    test_set: str = "Test1",
    skip_bad: bool = False,
    synthetic_size: str = "default",
    data_seed: int = 0,
) -> EmotionCorpus:
    """A labelled corpus: ``iemocap`` | ``msp-podcast`` | ``manifest`` (``root`` required:
    the dataset's folder, or the manifest CSV) | ``synthetic`` (built in, sized by
    ``synthetic_size``, seeded by ``data_seed``). ``subset`` applies to IEMOCAP,
    ``test_set`` to MSP-Podcast; ``skip_bad`` skips and counts bad label rows."""
    if dataset not in EMOTION_DATASETS:
        raise UserInputError(
            f"`dataset` must be one of {', '.join(EMOTION_DATASETS)}, got {dataset!r}"
        )
    if dataset == "synthetic":
        if synthetic_size not in SYNTHETIC_SIZES:
            raise UserInputError(
                f"`synthetic_size` must be one of {', '.join(SYNTHETIC_SIZES)}, "
                f"got {synthetic_size!r}"
            )
        return load_synthetic(synthetic_size, seed=data_seed)
    if not root:
        raise UserInputError(f"`dataset` {dataset} needs `root`")
    if dataset == "iemocap":
        return load_iemocap(root, subset=subset, skip_bad=skip_bad)
    if dataset == "msp-podcast":
        return load_msp_podcast(root, test_set=test_set, skip_bad=skip_bad)
    return load_manifest(root, skip_bad=skip_bad)


__all__ = [
    "EMOTION_DATASETS",
    "PRETRAIN_FORMATS",
    "CorpusSource",
    "detect_format",
    "open_emotion_corpus",
    "open_pretrain_corpus",
]
