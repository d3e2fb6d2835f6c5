"""Builders of tiny corpora in the exact public layouts (IEMOCAP, MSP-Podcast, manifest)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def write_wav(
    path: Path, seconds: float = 0.25, *, seed: int = 0, sr: int = SR, channels: int = 1
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    data = 0.1 * rng.standard_normal((n, channels) if channels > 1 else n)
    sf.write(path, data.astype(np.float32), sr, subtype="PCM_16")
    return path


def iemocap_block(
    utterance: str, emotion: str, vad: tuple[float, float, float], start: float = 1.0
) -> str:
    """One evaluation block: the label line, then annotator lines as in the release."""
    v, a, d = vad
    return (
        f"[{start:.4f} - {start + 2.5:.4f}]\t{utterance}\t{emotion}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
        f"C-E1:\tNeutral;\t()\n"
        f"C-E2:\tFrustration; Anger;\t(angry)\n"
        f"A-E1:\tval 3; act 2; dom  2;\t()\n"
        f"A-F2:\tval 2; act 3; dom  3;\t()\n\n"
    )


def make_iemocap(
    root: Path,
    sessions: tuple[int, ...] = (1, 2),
    emotions: tuple[str, ...] = ("neu", "ang", "sad", "hap", "exc", "fru"),
    seconds: float = 0.25,
) -> dict[str, tuple[float, float, float]]:
    """Two dialogs per session (an impro and a script one), utterances of both speakers.

    Returns {utterance: (A, V, D)} for every labelled utterance (all categories).
    """
    labels: dict[str, tuple[float, float, float]] = {}
    for s in sessions:
        session = root / f"Session{s}"
        evaluation = session / "dialog" / "EmoEvaluation"
        evaluation.mkdir(parents=True, exist_ok=True)
        for dialog in (f"Ses{s:02d}F_impro01", f"Ses{s:02d}M_script01_1"):
            text = IEMOCAP_HEADER
            for k, emotion in enumerate(emotions):
                gender = "FM"[k % 2]
                utterance = f"{dialog}_{gender}{k:03d}"
                v, a, d = 1.5 + (k % 4) * 0.5, 2.0 + (k % 3) * 0.5 + s * 0.1, 2.5 + (k % 2)
                text += iemocap_block(utterance, emotion, (v, a, d), start=2.0 * k)
                labels[utterance] = (a, v, d)
                write_wav(
                    session / "sentences" / "wav" / dialog / f"{utterance}.wav",
                    seconds,
                    seed=zlib.crc32(utterance.encode()),
                )
            (evaluation / f"{dialog}.txt").write_text(text)
        # Things the parser must ignore: sub-folders and macOS resource forks.
        (evaluation / "Categorical").mkdir(exist_ok=True)
        (evaluation / "Categorical" / f"Ses{s:02d}F_impro01_e1_cat.txt").write_text("junk\n")
        (evaluation / f"._Ses{s:02d}F_impro01.txt").write_bytes(b"\x00\x05\x16\x07junk")
    return labels


MSP_HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"


def make_msp(
    root: Path,
    rows: list[tuple[str, str, str, str, str, str, str, str]],
    spelling: str = "labels_consensus.csv",
    write_audio: bool = True,
) -> Path:
    """rows: (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set)."""
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    text = MSP_HEADER + "".join(",".join(r) + "\n" for r in rows)
    (root / "Labels" / spelling).write_text(text)
    if write_audio:
        for k, r in enumerate(rows):
            write_wav(root / "Audios" / r[0], 0.2, seed=k)
    return root / "Labels" / spelling


def msp_rows(n_per_split: int = 3) -> list[tuple[str, ...]]:
    rows = []
    k = 0
    for split in ("Train", "Development", "Test1", "Test2"):
        for _ in range(n_per_split):
            k += 1
            rows.append(
                (
                    f"MSP-PODCAST_{k:04d}_0001.wav",
                    "HASN"[k % 4],
                    f"{1 + k % 7}",
                    f"{2 + k % 5}.5",
                    f"{3 + k % 3}",
                    str(100 + k % 4),
                    "Female",
                    split,
                )
            )
    return rows


def write_samples(path: Path, wave: np.ndarray, *, sr: int = SR) -> Path:
    """``wave`` bit-exact as a 32-bit float WAV (NaN and huge values survive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(wave, np.float32), sr, subtype="FLOAT")
    return path


def overstate_wav_data(path: Path, factor: int = 3) -> Path:
    """Rewrites a WAV header so its data chunk claims ``factor`` times the bytes it holds
    (what a file cut short after its header was written looks like)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    data[at + 4 : at + 8] = (size * factor).to_bytes(4, "little")
    data[4:8] = (len(data) - 8 + size * (factor - 1)).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def write_manifest(root: Path, rows: list[tuple[str, float, float, float, str, str, str]]) -> Path:
    """manifest.csv in ``root``: rows (path, activation, valence, dominance, split, speaker,
    emotion), paths relative to ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,activation,valence,dominance,split,speaker,emotion"]
    lines += [",".join(map(str, row)) for row in rows]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def small_manifest(root: Path, *, seconds: float = 0.3, label_shift: float = 0.0) -> Path:
    """18 utterances of 3 speakers (12 train, 3 validation, 3 test), written as WAV files,
    with labels that ``label_shift`` changes (the same audio, other labels)."""
    rows = []
    for k in range(18):
        split = "train" if k < 12 else ("validation" if k < 15 else "test")
        name = f"u{k:02d}.wav"
        write_wav(root / name, seconds, seed=k)
        a, v, d = 1 + k % 5 + label_shift, 1 + (k * 2) % 5, 1 + (k * 3) % 5 + label_shift
        rows.append((name, a, v, d, split, f"s{k % 3}", ("ang", "sad", "neu")[k % 3]))
    return write_manifest(root, rows)
