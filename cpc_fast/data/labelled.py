"""What every labelled emotion corpus shares: the record type, bad-row reporting, the
protocols that split a corpus into folds, and the label scaling used for training.

Labels are always (activation, valence, dominance) on the corpus's ORIGINAL scale (IEMOCAP
1-5, MSP-Podcast 1-7). Training uses :class:`LabelScaler` (z-scores fitted on the training
split of each fold); predictions are mapped back before any CCC is reported.

Protocols:

* ``sessions`` (IEMOCAP, the synthetic corpus): leave-one-session-out, one fold per session.
  Validation comes from the training sessions, ``validation="speaker"`` (default): for the
  fold that tests session ``sessions[k]``, the validation set is one speaker of the next
  session ``sessions[(k + 1) % n]``, the speakers of that session taken in sorted order,
  alternating with k (IEMOCAP: fold 1 validates on Ses02F, fold 2 on Ses03M, ...), so
  validation is speaker-independent like the test. ``validation="random"``: a fixed 10 % of
  the training utterances (seeded).
* ``splits`` (MSP-Podcast, manifests): one fold from the corpus's own train / validation /
  test split. A corpus without validation rows has them carved from its training rows as
  above (``speaker``: whole speakers, in a seeded order, until at least 10 %).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpc_fast.data.audio import Conversions, audio_info, read_audio
from cpc_fast.data.file_index import AudioFileDataset, AudioItem
from cpc_fast.data.prepared import PreparedCorpus, prepare_corpus
from cpc_fast.errors import UserInputError

DIMENSIONS = ("activation", "valence", "dominance")
SPLITS = ("train", "validation", "test")
VALIDATION_MODES = ("speaker", "random")
VALIDATION_FRACTION = 0.10
SAMPLE_RATE = 16000
MIN_SAMPLES = 160  # one 10 ms frame: the least any feature extractor accepts
IDENTITY_PARTS = ("records", "labels", "audio")
_MAX_LISTED = 25


@dataclass(frozen=True)
class EmotionRecord:
    """One labelled utterance."""

    utt_id: str
    labels: tuple[float, float, float]  # (activation, valence, dominance), original scale
    path: Path | None = None  # audio file; None when the corpus generates its audio
    split: str | None = None  # "train" | "validation" | "test" for corpora with splits
    speaker: str | None = None
    session: int | None = None
    emotion: str | None = None  # categorical label when the corpus has one
    source: str = ""  # "file:line" of the label row, for messages


@dataclass(frozen=True)
class Fold:
    """Indices into a corpus's records."""

    name: str
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


class BadRows:
    """Collects problems with label rows; raises them all at once or records them as skipped."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problems: list[str] = []

    def add(self, source: str, reason: str) -> None:
        self.problems.append(f"{source}: {reason}")

    def __len__(self) -> int:
        return len(self.problems)

    def resolve(self, skip_bad: bool) -> list[str]:
        """Raises a :class:`UserInputError` listing every bad row unless ``skip_bad``."""
        if self.problems and not skip_bad:
            listed = self.problems[:_MAX_LISTED]
            more = len(self.problems) - len(listed)
            lines = "\n  ".join(listed) + (f"\n  ... and {more} more" if more else "")
            raise UserInputError(
                f"{self.what}: {len(self.problems)} bad row(s) (fix them, or pass `skip_bad=True` "
                f"to skip and count them):\n  {lines}"
            )
        return list(self.problems)


def check_audio(
    path: Path, source: str, bad: BadRows, conversions: Conversions | None = None
) -> bool:
    """True when ``path`` is a readable audio file of at least one 10 ms frame at 16 kHz;
    otherwise records why (from the header only: nothing is decoded). A usable file at
    another rate or with several channels (converted when read) is counted in
    ``conversions``."""
    if not path.is_file():
        bad.add(source, f"audio file {path} does not exist")
        return False
    try:
        info = audio_info(path)
    except UserInputError as exc:  # AudioReadError names the file
        bad.add(source, f"unreadable audio: {exc}")
        return False
    samples = info.samples_at(SAMPLE_RATE)
    if samples < MIN_SAMPLES:
        bad.add(source, f"{path} has {samples} samples at 16 kHz, less than one 10 ms frame")
        return False
    if conversions is not None:
        conversions.add(info)
    return True


def parse_score(text: str, lo: float | None, hi: float | None) -> float:
    """A label value, checked to be finite and inside [lo, hi] when given."""
    value = float(text)  # ValueError for non-numbers: the caller records the row
    if not np.isfinite(value):
        raise ValueError(f"label value {text!r} is not finite")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"label value {value:g} is outside [{lo:g}, {hi:g}]")
    return value


class EmotionCorpus:
    """A list of records, their audio and their fold protocol.

    Subclasses that generate audio override :meth:`wave` and :meth:`fingerprint` (and
    keep ``path`` None: their audio is not checked by :meth:`prepare`).
    """

    def __init__(
        self,
        name: str,
        records: Sequence[EmotionRecord],
        *,
        protocol: str,
        label_range: tuple[float, float] | None = None,
        skipped: Sequence[str] = (),
        description: str = "",
        conversions: Conversions | None = None,
    ) -> None:
        if protocol not in ("sessions", "splits"):
            raise ValueError(f"unknown protocol {protocol!r}")
        if not records:
            raise UserInputError(f"{name}: no usable utterances")
        self.name = name
        self.records = list(records)
        self.protocol = protocol
        self.label_range = label_range
        self.skipped = list(skipped)
        self.description = description
        # what reading converts (resampling, down-mixing), reported once by the commands
        self.conversions = conversions
        # the prepared cache wave() reads from once prepare() ran: (corpus, path -> its item)
        self._prepared: tuple[PreparedCorpus, dict[str, int]] | None = None
        self._stats: list[os.stat_result | None] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def wave(self, index: int) -> np.ndarray:
        """The (n,) float32 16 kHz mono waveform of record ``index`` (converted when the file
        is not)."""
        path = self.records[index].path
        if path is None:
            raise ValueError(f"{self.name}: record {index} has no audio file")
        if self._prepared is not None and str(path) in self._prepared[1]:
            prepared, positions = self._prepared
            wave = prepared[positions[str(path)]]
            if wave.dtype == np.int16:  # the float32 read_audio gives: int16 / 32768, exact
                return np.multiply(wave, np.float32(1 / 32768), dtype=np.float32)
            return np.array(wave)  # a writable copy of the memory-mapped samples
        return read_audio(path, sample_rate=SAMPLE_RATE)

    def num_samples(self, index: int) -> int:
        """The length of :meth:`wave` ``(index)``, read from the prepared cache without
        converting it when the corpus is prepared."""
        path = self.records[index].path
        if self._prepared is not None and path is not None and str(path) in self._prepared[1]:
            prepared, positions = self._prepared
            return int(prepared[positions[str(path)]].shape[0])
        return int(self.wave(index).shape[0])

    def labels(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """(N, 3) float64 labels (activation, valence, dominance), original scale."""
        idx = range(len(self.records)) if indices is None else indices
        return np.array([self.records[i].labels for i in idx], dtype=np.float64).reshape(-1, 3)

    def identity(self) -> dict[str, str]:
        """What the corpus holds, as three digests, to tell whether two runs used the same
        data: "records" (ids, splits, speakers, sessions, categories), "labels" and
        "audio" (each file's size; generated audio is fixed by the corpus's settings).
        Paths are left out: the same data moved elsewhere is the same data."""
        parts = {name: hashlib.sha256(f"{self.name}\n".encode()) for name in IDENTITY_PARTS}
        for r, st in zip(self.records, self._file_stats(), strict=True):
            what = (r.utt_id, r.split, r.speaker, r.session, r.emotion)
            parts["records"].update(f"{what}\n".encode())
            parts["labels"].update(f"{r.utt_id}\t{r.labels}\n".encode())
            size = st.st_size if st is not None else -1
            parts["audio"].update(f"{r.utt_id}\t{size}\n".encode())
        return {name: h.hexdigest() for name, h in parts.items()}

    def prepare(
        self,
        root: str | os.PathLike | None,
        *,
        workers: int = 0,
        progress: bool = False,
        info: Callable[[str], None] | None = None,
    ) -> list[tuple[int, str]]:
        """Decodes every audio file once into the prepared cache under ``root``
        (:func:`~cpc_fast.data.prepared.prepare_corpus`; a complete one is reused, decoding
        nothing), after which :meth:`wave` reads from it. Returns ``(index, why)`` of each
        file that fails (cannot be decoded, holds NaN/Inf, is shorter than its header says
        or than one 10 ms frame); generated audio is not checked."""
        files = [i for i, r in enumerate(self.records) if r.path is not None]
        if not files:
            return []
        items = [
            AudioItem(str(self.records[i].path), self.records[i].utt_id, self.records[i].speaker, 0)
            for i in files
        ]
        prepared = prepare_corpus(
            AudioFileDataset(items, sample_rate=SAMPLE_RATE, description=self.description),
            root,
            workers=workers,
            progress=progress,
            info=info,
        )
        self._prepared = (prepared, {item.path: k for k, item in enumerate(items)})
        bad = []
        for k, i in enumerate(files):
            try:
                samples = prepared[k].shape[0]
            except UserInputError as exc:  # AudioReadError names the file
                bad.append((i, str(exc)))
                continue
            if samples < MIN_SAMPLES:
                bad.append((i, f"{self.records[i].path}: {samples} samples, less than one frame"))
        return bad

    def drop_unreadable(self, bad: Sequence[tuple[int, str]], skip_bad: bool) -> None:
        """Raises listing ``bad`` (from :meth:`prepare`), or with ``skip_bad`` drops those
        records and counts them in ``skipped``."""
        if not bad:
            return
        rows = BadRows(f"{self.name}: audio that fails when read")
        for i, why in bad:
            rows.add(self.records[i].source or self.records[i].utt_id, why)
        self.skipped += rows.resolve(skip_bad)
        dropped = {i for i, _ in bad}
        self.records = [r for i, r in enumerate(self.records) if i not in dropped]
        self._stats = None
        if not self.records:
            raise UserInputError(f"{self.name}: no usable utterances ({len(dropped)} unreadable)")

    def fingerprint(self) -> str:
        """Identifies the audio (not the labels): ids, paths, sizes and modification times."""
        h = hashlib.sha256(f"{self.name}\n".encode())
        for r, st in zip(self.records, self._file_stats(), strict=True):
            size, mtime = (st.st_size, st.st_mtime_ns) if st else (0, 0)
            h.update(f"{r.utt_id}\t{r.path}\t{size}\t{mtime}\n".encode())
        return h.hexdigest()

    def _file_stats(self) -> list[os.stat_result | None]:
        """Each record's ``os.stat`` (None for generated audio), taken once: the identity
        and the fingerprint describe the files as this run first found them."""
        if self._stats is None:
            self._stats = [os.stat(r.path) if r.path is not None else None for r in self.records]
        return self._stats

    def folds(self, validation: str = "speaker", seed: int = 0) -> list[Fold]:
        """The corpus's evaluation protocol as a list of folds (see the module docstring)."""
        if validation not in VALIDATION_MODES:
            raise UserInputError(
                f"`validation` must be one of {', '.join(VALIDATION_MODES)}, got {validation!r}"
            )
        if self.protocol == "sessions":
            return _session_folds(self, validation, seed)
        return [_split_fold(self, validation, seed)]


def _session_folds(corpus: EmotionCorpus, validation: str, seed: int) -> list[Fold]:
    sessions = sorted({r.session for r in corpus.records if r.session is not None})
    if len(sessions) < 2:
        raise UserInputError(f"{corpus.name}: leave-one-session-out needs 2+ sessions")
    folds = []
    for k, test_session in enumerate(sessions):
        test = [i for i, r in enumerate(corpus.records) if r.session == test_session]
        rest = [i for i, r in enumerate(corpus.records) if r.session != test_session]
        if validation == "speaker":
            val_session = sessions[(k + 1) % len(sessions)]
            speakers = sorted(
                {
                    corpus.records[i].speaker
                    for i in rest
                    if corpus.records[i].session == val_session
                }
            )
            val_speaker = speakers[k % len(speakers)]
            held = {i for i in rest if corpus.records[i].speaker == val_speaker}
        else:
            held = _random_holdout(rest, seed + k)
        train = [i for i in rest if i not in held]
        folds.append(Fold(f"fold{k + 1}", tuple(train), tuple(sorted(held)), tuple(test)))
    return folds


def _split_fold(corpus: EmotionCorpus, validation: str, seed: int) -> Fold:
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, r in enumerate(corpus.records):
        if r.split in by_split:
            by_split[r.split].append(i)
    train, held, test = by_split["train"], by_split["validation"], by_split["test"]
    for split in ("train", "test"):
        if not by_split[split]:
            raise UserInputError(f"{corpus.name}: no '{split}' utterances")
    if not held:
        if validation == "speaker":
            held_set = _speaker_holdout(corpus, train, seed)
        else:
            held_set = _random_holdout(train, seed)
        held = sorted(held_set)
        train = [i for i in train if i not in held_set]
    return Fold("official", tuple(train), tuple(held), tuple(test))


def _random_holdout(indices: Sequence[int], seed: int) -> set[int]:
    count = max(1, round(VALIDATION_FRACTION * len(indices)))
    rng = np.random.default_rng(seed)
    return {int(i) for i in rng.choice(np.asarray(indices), size=count, replace=False)}


def _speaker_holdout(corpus: EmotionCorpus, indices: Sequence[int], seed: int) -> set[int]:
    by_speaker: dict[str, list[int]] = {}
    for i in indices:
        speaker = corpus.records[i].speaker
        if speaker is None:
            raise UserInputError(
                f"{corpus.name}: no validation rows and no speaker column to carve them by "
                "speaker; add split=validation rows, a speaker column, or use `validation=random`"
            )
        by_speaker.setdefault(speaker, []).append(i)
    if len(by_speaker) < 2:
        raise UserInputError(
            f"{corpus.name}: only one training speaker, cannot hold one out for validation; "
            "use `validation=random`"
        )
    order = sorted(by_speaker)
    np.random.default_rng(seed).shuffle(order)
    held: set[int] = set()
    for speaker in order[:-1]:  # always leave at least one speaker for training
        held.update(by_speaker[speaker])
        if len(held) >= VALIDATION_FRACTION * len(indices):
            break
    return held


@dataclass
class LabelScaler:
    """Per-dimension z-scores fitted on training labels: y' = (y − mean) / std."""

    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    @classmethod
    def fit(cls, labels: np.ndarray) -> LabelScaler:
        """From (N, 3) labels; a constant dimension keeps std 1 (nothing to scale)."""
        mean = labels.mean(axis=0)
        std = labels.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(mean=[float(m) for m in mean], std=[float(s) for s in std])

    def transform(self, labels: np.ndarray) -> np.ndarray:
        return (labels - np.asarray(self.mean)) / np.asarray(self.std)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * np.asarray(self.std) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> LabelScaler:
        return cls(mean=[float(x) for x in d["mean"]], std=[float(x) for x in d["std"]])


__all__ = [
    "DIMENSIONS",
    "IDENTITY_PARTS",
    "SPLITS",
    "VALIDATION_MODES",
    "BadRows",
    "EmotionCorpus",
    "EmotionRecord",
    "Fold",
    "LabelScaler",
    "check_audio",
    "parse_score",
]
