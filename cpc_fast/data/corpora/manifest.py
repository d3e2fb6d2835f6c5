"""A manifest CSV for a user's own labelled data.

Header and columns: ``path,activation,valence,dominance,split[,speaker,emotion]``.

* ``path``: the audio file, relative to the CSV's folder (or absolute); any format,
  rate and channel count (converted to 16 kHz mono when read).
* ``activation``, ``valence``, ``dominance``: finite numbers on any scale (reports keep it).
* ``split``: ``train``, ``validation`` (also ``valid``, ``dev``, ``development``) or ``test``.
  Without validation rows, validation is carved from the training rows (see
  :mod:`cpc_fast.data.labelled`).
* ``speaker`` and ``emotion`` are optional; ``emotion`` colours ``cpc-fast visualize``.

``--root`` is the CSV itself, or a folder holding ``manifest.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cpc_fast.data.audio import Conversions
from cpc_fast.data.labelled import BadRows, EmotionCorpus, EmotionRecord, check_audio, parse_score
from cpc_fast.errors import UserInputError

REQUIRED = ("path", "activation", "valence", "dominance", "split")
OPTIONAL = ("speaker", "emotion")
_SPLITS = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "development": "validation",
    "test": "test",
}


def find_manifest(root: Path) -> Path:
    if root.is_dir():
        root = root / "manifest.csv"
    if not root.is_file():
        raise UserInputError(f"manifest {root} does not exist")
    return root


def load_manifest(root: str | Path, *, skip_bad: bool = False) -> EmotionCorpus:
    """Reads a manifest CSV; bad rows (listed as file:line) raise unless ``skip_bad``."""
    csv_path = find_manifest(Path(root))
    folder = csv_path.resolve().parent
    conversions = Conversions()
    bad = BadRows(f"manifest {csv_path}")
    records: list[EmotionRecord] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in fields]
        if missing:
            raise UserInputError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected the header "
                f"{','.join(REQUIRED)}[,{','.join(OPTIONAL)}]"
            )
        reader.fieldnames = fields
        seen: set[str] = set()
        for number, row in enumerate(reader, start=2):
            source = f"{csv_path}:{number}"
            rel = (row["path"] or "").strip()
            split = _SPLITS.get((row["split"] or "").strip().lower())
            if not rel:
                bad.add(source, "empty path")
                continue
            if split is None:
                bad.add(source, f"split {row['split']!r} is not train, validation or test")
                continue
            if rel in seen:
                bad.add(source, f"{rel} is listed twice")
                continue
            seen.add(rel)
            try:
                labels = tuple(
                    parse_score(row[c], None, None) for c in ("activation", "valence", "dominance")
                )
            except (ValueError, TypeError) as exc:
                bad.add(source, f"{rel}: bad label value ({exc})")
                continue
            wav = Path(rel) if Path(rel).is_absolute() else folder / rel
            if not check_audio(wav, source, bad, conversions):
                continue
            speaker = (row.get("speaker") or "").strip() or None
            emotion = (row.get("emotion") or "").strip() or None
            records.append(
                EmotionRecord(
                    utt_id=rel,
                    labels=labels,
                    path=wav,
                    split=split,
                    speaker=speaker,
                    emotion=emotion,
                    source=source,
                )
            )
    skipped = bad.resolve(skip_bad)
    return EmotionCorpus(
        "manifest",
        records,
        protocol="splits",
        skipped=skipped,
        description=f"manifest {csv_path}",
        conversions=conversions,
    )


__all__ = ["OPTIONAL", "REQUIRED", "find_manifest", "load_manifest"]
