"""The speech synthesizer's parameters: a speaker's :class:`Voice` and an utterance's
:class:`Prosody` (:mod:`cpc_fast.data.speech_synth` turns them into samples).

    voice = voice_for_speaker("spk-7", seed=0)  # the same id and seed, the same voice
    prosody = Prosody(rate=1.3, loudness_db=4.0)  # defaults are neutral
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields

import numpy as np

from cpc_fast.errors import UserInputError


def _ranged(default: float, low: float, high: float) -> float:
    """A parameter and the values it may take: wide enough for any voice, tight enough to
    stay speech."""
    return field(default=default, metadata={"range": (low, high)})


@dataclass(frozen=True)
class Voice:
    """A speaker's identity: what stays the same across that speaker's utterances.

    Attributes:
        f0_hz: base fundamental frequency (typical male 85-155 Hz, female 165-255 Hz).
        tract_scale: multiplies every formant frequency; a shorter vocal tract is > 1
            (about 1.0 male, 1.17 female).
        breathiness: aspiration-noise amplitude relative to the glottal pulses (0-1).
        syllable_rate: syllables per second at ``Prosody.rate == 1``.
        spectral_tilt_db_per_octave: the speaker's own tilt, added to the prosody's;
            positive is brighter, negative darker.
        jitter: relative standard deviation of the glottal period from cycle to cycle.
        shimmer: relative standard deviation of the pulse amplitude from cycle to cycle.
    """

    f0_hz: float = _ranged(120.0, 40.0, 600.0)
    tract_scale: float = _ranged(1.0, 0.6, 1.6)
    breathiness: float = _ranged(0.05, 0.0, 1.0)
    syllable_rate: float = _ranged(4.5, 0.5, 12.0)
    spectral_tilt_db_per_octave: float = _ranged(0.0, -12.0, 12.0)
    jitter: float = _ranged(0.01, 0.0, 0.2)
    shimmer: float = _ranged(0.04, 0.0, 0.5)

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass(frozen=True)
class Prosody:
    """Utterance-level modifiers on top of a :class:`Voice`; the defaults are neutral.

    Each factor moves one measurable quantity:

    * ``rate``: multiplies the syllables per second (the count of amplitude-envelope peaks
      per second of speech); pauses keep their length.
    * ``loudness_db``: gain on the active-speech RMS relative to ``REFERENCE_RMS``
      (-26 dBFS). Exact up to about +6 dB; beyond, the peak limiter turns the loudest
      moments down to ``LIMITER_KNEE``, so RMS still grows, somewhat less than asked.
    * ``pitch_shift_semitones``: multiplies the whole F0 contour by 2 ** (s / 12), so the
      median F0 moves by exactly that many semitones.
    * ``pitch_range``: multiplies the excursions of log F0 around the speaker's base
      (accents, declination, final falls): 0 is a monotone, 2 twice as wide.
    * ``spectral_tilt_db_per_octave``: added to the voice's tilt; raises (positive) or
      lowers (negative) the energy above 500 Hz against the energy below, moving the
      spectral centroid.
    * ``pause_rate``: multiplies the probability of a phrase-ending pause after each
      syllable (0 = no pauses), i.e. the fraction of silence.
    """

    rate: float = _ranged(1.0, 0.2, 5.0)
    loudness_db: float = _ranged(0.0, -40.0, 20.0)
    pitch_shift_semitones: float = _ranged(0.0, -24.0, 24.0)
    pitch_range: float = _ranged(1.0, 0.0, 5.0)
    spectral_tilt_db_per_octave: float = _ranged(0.0, -12.0, 12.0)
    pause_rate: float = _ranged(1.0, 0.0, 8.0)

    def __post_init__(self) -> None:
        _check_ranges(self)


def _check_ranges(params: object) -> None:
    for f in fields(params):
        low, high = f.metadata["range"]
        value = getattr(params, f.name)
        if not (math.isfinite(value) and low <= value <= high):
            raise UserInputError(f"`{f.name}` must be within [{low}, {high}], got {value}")


def random_voice(rng: np.random.Generator, gender: str | None = None) -> Voice:
    """Draws a speaker. ``gender`` is "female", "male" or None (either, with equal odds)."""
    if gender is None:
        gender = "female" if rng.random() < 0.5 else "male"
    if gender not in ("female", "male"):
        raise UserInputError(f"gender must be 'female', 'male' or None, got {gender!r}")
    female = gender == "female"
    return Voice(
        f0_hz=float(rng.uniform(165, 255) if female else rng.uniform(85, 155)),
        tract_scale=float(rng.uniform(1.10, 1.25) if female else rng.uniform(0.92, 1.06)),
        breathiness=float(rng.uniform(0.04, 0.18) if female else rng.uniform(0.02, 0.12)),
        syllable_rate=float(rng.uniform(3.5, 5.8)),
        spectral_tilt_db_per_octave=float(rng.uniform(-2.0, 1.0)),
        jitter=float(rng.uniform(0.004, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.08)),
    )


def voice_for_speaker(speaker_id: str, seed: int = 0, gender: str | None = None) -> Voice:
    """The voice of a named speaker: the same ``(speaker_id, seed)`` gives the same voice,
    in every process and Python version (a SHA-256 of the id seeds the draw)."""
    digest = hashlib.sha256(f"{seed}\x00{speaker_id}".encode()).digest()
    return random_voice(np.random.default_rng(int.from_bytes(digest[:8], "little")), gender)


__all__ = ["Prosody", "Voice", "random_voice", "voice_for_speaker"]
