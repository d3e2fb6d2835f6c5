"""IEMOCAP in its public layout (``IEMOCAP_full_release``).

    <root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt   labels
    <root>/Session{s}/sentences/wav/<dialog>/<utterance>.wav  audio

A label line is ``[start - end]<TAB>UTTERANCE<TAB>EMOTION<TAB>[V, A, D]``: the triple is
valence, activation, dominance on a 1-5 scale (we store it as activation, valence,
dominance). The annotator lines between them (``C-E1: ...``, ``A-E3: val 3; ...``) and the
header are ignored, as are the ``Categorical/``, ``Attribute/`` and ``Self-evaluation/``
sub-folders and macOS ``._*`` files. Dialogs are named like ``Ses01F_impro01`` or
``Ses01F_script01_1``; an utterance is ``<dialog>_<F|M><nnn>``, and its speaker is the session
plus the gender letter that starts the last ``_`` field (``Ses01F_impro01_M013`` -> Ses01M).

Subsets: ``paper`` (default) keeps the utterances whose categorical label is neu, hap, exc,
ang or sad: the 5,531 utterances of the paper. ``all`` keeps every utterance with
dimensional labels; a comma list of category codes keeps those categories.
"""

from __future__ import annotations

import re
from pathlib import Path

from cpc_fast.data.audio import Conversions
from cpc_fast.data.labelled import BadRows, EmotionCorpus, EmotionRecord, check_audio, parse_score
from cpc_fast.errors import UserInputError

PAPER_CATEGORIES = ("neu", "hap", "exc", "ang", "sad")
LABEL_RANGE = (1.0, 5.0)

_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\t(\S+)\t(\S+)\t\[([^\]]*)\]\s*$")
_UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")


def resolve_subset(subset: str) -> frozenset[str] | None:
    """``paper`` -> the five categories, ``all`` -> None (no filter), else a comma list."""
    if subset == "paper":
        return frozenset(PAPER_CATEGORIES)
    if subset == "all":
        return None
    codes = frozenset(c.strip() for c in subset.split(",") if c.strip())
    if not codes:
        raise UserInputError(f"`subset`: expected paper, all or a comma list, got {subset!r}")
    return codes


def _session_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserInputError(f"IEMOCAP root {root} is not a folder")
    sessions = sorted(p for p in root.glob("Session[0-9]*") if p.is_dir())
    if not sessions:
        raise UserInputError(
            f"{root}: no Session1..Session5 folders; `root` must be IEMOCAP_full_release"
        )
    return sessions


def parse_label_file(path: Path, bad: BadRows) -> list[tuple[str, str, tuple[float, ...], str]]:
    """Rows ``(utterance, emotion, (A, V, D), "file:line")`` of one EmoEvaluation file."""
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.startswith("["):
            continue  # header, blank and annotator lines
        source = f"{path}:{number}"
        match = _LINE.match(line)
        if match is None:
            bad.add(source, f"malformed label line {line.strip()!r}")
            continue
        utterance, emotion, triple = match.group(3), match.group(4), match.group(5)
        parts = [p.strip() for p in triple.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError(f"expected [V, A, D], got [{triple}]")
            v, a, d = (parse_score(p, *LABEL_RANGE) for p in parts)
        except ValueError as exc:
            bad.add(source, f"{utterance}: bad label value ({exc})")
            continue
        rows.append((utterance, emotion, (a, v, d), source))
    return rows


def load_iemocap(
    root: str | Path, *, subset: str = "paper", skip_bad: bool = False
) -> EmotionCorpus:
    """Reads labels and checks audio headers; bad rows raise (listed) unless ``skip_bad``."""
    root = Path(root)
    keep = resolve_subset(subset)
    conversions = Conversions()
    bad = BadRows(f"IEMOCAP {root}")
    records: list[EmotionRecord] = []
    seen: set[str] = set()
    label_files = 0
    for session_dir in _session_dirs(root):
        for label_file in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
            if label_file.name.startswith("._"):
                continue
            label_files += 1
            for utterance, emotion, labels, source in parse_label_file(label_file, bad):
                if keep is not None and emotion not in keep:
                    continue
                match = _UTTERANCE.match(utterance)
                if match is None:
                    bad.add(
                        source, f"utterance name {utterance!r} is not Ses<nn><F|M>_..._<F|M><n>"
                    )
                    continue
                if utterance in seen:
                    bad.add(source, f"utterance {utterance} is labelled twice")
                    continue
                seen.add(utterance)
                session, gender = int(match.group(1)), match.group(2)
                dialog = utterance.rsplit("_", 1)[0]
                wav = session_dir / "sentences" / "wav" / dialog / f"{utterance}.wav"
                if not check_audio(wav, source, bad, conversions):
                    continue
                records.append(
                    EmotionRecord(
                        utt_id=utterance,
                        labels=labels,
                        path=wav,
                        speaker=f"Ses{session:02d}{gender}",
                        session=session,
                        emotion=emotion,
                        source=source,
                    )
                )
    if label_files == 0:
        raise UserInputError(f"{root}: no Session*/dialog/EmoEvaluation/*.txt label files")
    skipped = bad.resolve(skip_bad)
    return EmotionCorpus(
        "iemocap",
        records,
        protocol="sessions",
        label_range=LABEL_RANGE,
        skipped=skipped,
        description=f"IEMOCAP ({subset} subset)",
        conversions=conversions,
    )


__all__ = ["LABEL_RANGE", "PAPER_CATEGORIES", "load_iemocap", "parse_label_file", "resolve_subset"]
