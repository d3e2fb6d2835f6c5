"""MSP-Podcast in its public layout.

    <root>/Audios/<FileName>                       audio (wav; any rate is resampled)
    <root>/Labels/labels_consensus.csv             labels (newer releases)
    <root>/Labels/labels_concensus.csv             the same, older releases' spelling

Columns used: FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set; the
scores are on a 1-7 scale. ``Split_Set`` maps to our splits as Train -> train, Validation
(v1.6) or Development (newer releases) -> validation, and the chosen test set -> test:
``Test1`` by default, ``Test2`` (or ``Test3``) when asked. Rows of the other test sets are
not used (they are counted in ``EmotionCorpus.description``, not reported as bad).
"""

from __future__ import annotations

import csv
from pathlib import Path

from cpc_fast.data.audio import Conversions
from cpc_fast.data.labelled import BadRows, EmotionCorpus, EmotionRecord, check_audio, parse_score
from cpc_fast.errors import UserInputError

LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")
LABEL_RANGE = (1.0, 7.0)
COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
TEST_SETS = ("Test1", "Test2", "Test3")
_SPLITS = {"Train": "train", "Validation": "validation", "Development": "validation"}


def find_label_file(root: Path) -> Path:
    """``Labels/labels_consensus.csv`` or the older ``labels_concensus.csv``."""
    if not root.is_dir():
        raise UserInputError(f"MSP-Podcast root {root} is not a folder")
    for name in LABEL_FILES:
        path = root / "Labels" / name
        if path.is_file():
            return path
    raise UserInputError(f"{root}: neither Labels/{LABEL_FILES[0]} nor Labels/{LABEL_FILES[1]}")


def load_msp_podcast(
    root: str | Path, *, test_set: str = "Test1", skip_bad: bool = False
) -> EmotionCorpus:
    """Reads the consensus labels and checks audio headers; bad rows raise unless ``skip_bad``."""
    root = Path(root)
    if test_set not in TEST_SETS:
        raise UserInputError(f"`test_set` must be one of {', '.join(TEST_SETS)}, got {test_set!r}")
    label_file = find_label_file(root)
    conversions = Conversions()
    bad = BadRows(f"MSP-Podcast {label_file}")
    records: list[EmotionRecord] = []
    unused = 0
    with open(label_file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(f"{label_file}: missing column(s) {', '.join(missing)}")
        seen: set[str] = set()
        for number, row in enumerate(reader, start=2):
            source = f"{label_file}:{number}"
            split_set = (row["Split_Set"] or "").strip()
            if split_set == test_set:
                split = "test"
            elif split_set in _SPLITS:
                split = _SPLITS[split_set]
            elif split_set in TEST_SETS:
                unused += 1
                continue
            else:
                bad.add(source, f"unknown Split_Set {split_set!r}")
                continue
            name = (row["FileName"] or "").strip()
            if not name or name in seen:
                bad.add(source, "empty FileName" if not name else f"{name} is listed twice")
                continue
            seen.add(name)
            try:
                labels = tuple(
                    parse_score(row[c], *LABEL_RANGE) for c in ("EmoAct", "EmoVal", "EmoDom")
                )
            except (ValueError, TypeError) as exc:
                bad.add(source, f"{name}: bad label value ({exc})")
                continue
            wav = root / "Audios" / name
            if not check_audio(wav, source, bad, conversions):
                continue
            speaker = (row["SpkrID"] or "").strip()
            records.append(
                EmotionRecord(
                    utt_id=name,
                    labels=labels,
                    path=wav,
                    split=split,
                    speaker=None if speaker.lower() in ("", "unknown") else speaker,
                    emotion=(row["EmoClass"] or "").strip() or None,
                    source=source,
                )
            )
    skipped = bad.resolve(skip_bad)
    return EmotionCorpus(
        "msp-podcast",
        records,
        protocol="splits",
        label_range=LABEL_RANGE,
        skipped=skipped,
        description=f"MSP-Podcast (test set {test_set}; {unused} rows of other test sets unused)",
        conversions=conversions,
    )


__all__ = [
    "COLUMNS",
    "LABEL_FILES",
    "LABEL_RANGE",
    "TEST_SETS",
    "find_label_file",
    "load_msp_podcast",
]
