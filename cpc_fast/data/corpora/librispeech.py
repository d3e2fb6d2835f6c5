"""LibriSpeech for CPC pre-training (the paper uses train-clean-100: 251 speakers, 100 h).

``root`` may be any of
    ROOT/                          containing LibriSpeech/<subset>/...
    ROOT/LibriSpeech/              containing <subset>/... and SPEAKERS.TXT
    ROOT/LibriSpeech/<subset>/     containing <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
Speakers come from the layout; ``SPEAKERS.TXT`` (beside the subsets), when present, adds each
speaker's sex and name. The validation split holds out ``valid_fraction`` of the utterances
by a hash of the utterance id (the same files on every machine, whatever the order or
``--max-minutes-per-speaker``). The minutes cap applies to the training part only: each
speaker keeps utterances in id order while the running total stays within the cap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpc_fast.data.audio import Conversions
from cpc_fast.data.file_index import AudioFileDataset, AudioItem, check_files, split_items
from cpc_fast.errors import UserInputError

DEFAULT_SUBSET = "train-clean-100"
_UTTERANCE = re.compile(r"^(\d+)-(\d+)-(\d+)\.flac$")


@dataclass(frozen=True)
class SpeakerInfo:
    """A row of SPEAKERS.TXT."""

    speaker: str
    sex: str
    subset: str
    minutes: float
    name: str


def read_speakers_txt(path: str | os.PathLike) -> dict[str, SpeakerInfo]:
    """Parses LibriSpeech's SPEAKERS.TXT: ';' comment lines, then ``ID | SEX | SUBSET |
    MINUTES | NAME`` (names may contain '|', so everything after the fourth bar is the name).
    """
    path = Path(path)
    speakers = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", maxsplit=4)]
        if len(fields) != 5 or not fields[0].isdigit():
            raise UserInputError(
                f"{path}, line {number}: expected 'ID | SEX | SUBSET | MINUTES | NAME', "
                f"got {line.strip()!r}"
            )
        try:
            minutes = float(fields[3])
        except ValueError:
            raise UserInputError(
                f"{path}, line {number}: MINUTES is not a number: {fields[3]!r}"
            ) from None
        speakers[fields[0]] = SpeakerInfo(fields[0], fields[1], fields[2], minutes, fields[4])
    return speakers


def _is_subset_dir(folder: Path) -> bool:
    """A folder of numeric speaker folders holding numeric chapter folders."""
    for speaker in folder.iterdir():
        if speaker.is_dir() and speaker.name.isdigit():
            if any(c.is_dir() and c.name.isdigit() for c in speaker.iterdir()):
                return True
    return False


def _corpus_and_subsets(root: Path) -> tuple[Path, list[str]]:
    """(the folder holding subsets, their names); ``root`` itself when it is a subset."""
    if _is_subset_dir(root):
        return root.parent, [root.name]
    corpus = root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root
    return corpus, sorted(p.name for p in corpus.iterdir() if p.is_dir() and _is_subset_dir(p))


def resolve_subsets(root: str | os.PathLike, subset: str | None = None) -> list[Path]:
    """The subset folders under ``root`` (see the module docstring for the accepted roots).

    ``subset`` names one or more subsets, comma-separated; by default train-clean-100 when
    present, otherwise the only subset there.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    corpus, found = _corpus_and_subsets(root)
    if not found:
        raise UserInputError(
            f"{root}: no LibriSpeech subset found (expected <subset>/<speaker>/<chapter>/"
            "<speaker>-<chapter>-<utt>.flac under it or under LibriSpeech/)"
        )
    if subset is None:
        if DEFAULT_SUBSET in found:
            return [corpus / DEFAULT_SUBSET]
        if len(found) == 1:
            return [corpus / found[0]]
        raise UserInputError(
            f"{corpus}: several subsets ({', '.join(found)}); choose with `subset`"
        )
    wanted = [s.strip() for s in subset.split(",") if s.strip()]
    missing = [s for s in wanted if s not in found]
    if missing:
        raise UserInputError(
            f"{corpus}: no subset {', '.join(missing)} (found: {', '.join(found)})"
        )
    return [corpus / s for s in wanted]


def _speakers_txt_for(subset_dir: Path) -> Path | None:
    for folder in (subset_dir.parent, subset_dir):
        candidate = folder / "SPEAKERS.TXT"
        if candidate.is_file():
            return candidate
    return None


def _candidates(subset_dir: Path, warn: Callable[[str], None] | None) -> list[tuple[str, str, str]]:
    """(path, utterance id, speaker) for every FLAC in the speaker/chapter layout."""
    out = []
    for path in sorted(subset_dir.rglob("*.flac")):
        match = _UTTERANCE.match(path.name)
        rel = path.relative_to(subset_dir).parts
        if match is None or len(rel) != 3 or (rel[0], rel[1]) != (match.group(1), match.group(2)):
            if warn is not None:
                warn(f"ignoring {path}: not <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac")
            continue
        out.append((str(path), path.stem, match.group(1)))
    return out


def cap_minutes(items: list[AudioItem], minutes: float, sample_rate: int) -> list[AudioItem]:
    """Keeps each speaker's utterances in id order while their total stays <= ``minutes``."""
    budget = minutes * 60.0 * sample_rate
    used: dict[str | None, int] = {}
    kept = []
    for item in sorted(items, key=lambda i: i.utterance_id):
        total = used.get(item.speaker, 0) + item.num_samples
        if total <= budget:
            used[item.speaker] = total
            kept.append(item)
    return kept


@dataclass
class LibriSpeech:
    """An indexed LibriSpeech subset: training and validation datasets plus speaker data."""

    train: AudioFileDataset
    valid: AudioFileDataset
    speakers: dict[str, SpeakerInfo]  # from SPEAKERS.TXT ({} when absent)
    subsets: list[Path]


def load_librispeech(
    root: str | os.PathLike,
    *,
    subset: str | None = None,
    max_minutes_per_speaker: float | None = None,
    valid_fraction: float = 0.02,
    sample_rate: int = 16000,
    min_samples: int = 160,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> LibriSpeech:
    """Indexes LibriSpeech under ``root`` (no decoding: headers only).

    Files at another rate or with several channels are converted when read (counted in
    ``train.conversions``). Bad files (unreadable, empty, shorter than ``min_samples``) are
    skipped, each reported through ``warn`` and listed in ``train.skipped``; with ``strict``
    the first one raises :class:`UserInputError` naming it.
    """
    subsets = resolve_subsets(root, subset)
    speakers: dict[str, SpeakerInfo] = {}
    candidates = []
    for subset_dir in subsets:
        txt = _speakers_txt_for(subset_dir)
        if txt is not None:
            speakers.update(read_speakers_txt(txt))
        candidates.extend(_candidates(subset_dir, warn))
    if not candidates:
        raise UserInputError(f"{root}: no .flac files in the LibriSpeech layout")
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
    if max_minutes_per_speaker is not None:
        train = cap_minutes(train, max_minutes_per_speaker, sample_rate)
    if not train:
        raise UserInputError(f"{root}: no usable training utterances ({len(skipped)} skipped)")
    names = "+".join(p.name for p in subsets)
    return LibriSpeech(
        train=AudioFileDataset(
            train,
            sample_rate=sample_rate,
            skipped=skipped,
            description=f"librispeech {names}",
            conversions=conversions,
        ),
        valid=AudioFileDataset(
            valid, sample_rate=sample_rate, description=f"librispeech {names} (validation)"
        ),
        speakers=speakers,
        subsets=subsets,
    )


def looks_like_librispeech(root: str | os.PathLike) -> bool:
    """True when ``root`` is, or holds, a folder in the LibriSpeech subset layout."""
    root = Path(root)
    return root.is_dir() and bool(_corpus_and_subsets(root)[1])


__all__ = [
    "DEFAULT_SUBSET",
    "LibriSpeech",
    "SpeakerInfo",
    "cap_minutes",
    "load_librispeech",
    "looks_like_librispeech",
    "read_speakers_txt",
    "resolve_subsets",
]
