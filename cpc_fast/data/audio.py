"""Reading audio files with soundfile: 16 kHz mono waveforms, checked, as 1-D numpy arrays.

    info = audio_info("a.flac")           # AudioInfo(frames, sample_rate, channels): header only
    wave = read_audio("a.flac")           # (n,) float32 in [-1, 1)
    wave = read_audio("a.wav", dtype="int16")   # (n,) int16, half the memory

Nothing is resampled or down-mixed: a file at another rate or with several channels raises
:class:`AudioFormatError`, an unreadable, empty or non-finite one :class:`AudioReadError`;
both are :class:`~cpc_fast.errors.UserInputError` and name the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cpc_fast.errors import UserInputError

SAMPLE_RATE = 16_000
_DTYPES = ("float32", "int16")


class AudioReadError(UserInputError):
    """The file is missing, cannot be decoded, holds no samples or holds NaN/Inf."""


class AudioFormatError(UserInputError):
    """The file decodes but is not what the model expects (sample rate, channels)."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header says: frames (samples per channel), sample rate and channel count."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """The header of ``path`` without decoding it (to filter files by length cheaply)."""
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError) as exc:
        raise AudioReadError(f"{path}: cannot read the audio header ({exc})") from None
    return AudioInfo(
        frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels)
    )


def read_audio(
    path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE, dtype: str = "float32"
) -> np.ndarray:
    """The (n,) waveform of a mono file at ``sample_rate``, as float32 or int16.

    float32 samples lie in [-1, 1) (int16 / 32768 for PCM files); int16 keeps the PCM values.
    The format is checked from the header before anything is decoded.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    _check_exists(path)
    try:
        with sf.SoundFile(str(path)) as f:
            if f.samplerate != sample_rate:
                raise AudioFormatError(
                    f"{path}: sample rate is {f.samplerate} Hz, expected {sample_rate} Hz "
                    "(resample it first, e.g. with sox or ffmpeg)"
                )
            if f.channels != 1:
                raise AudioFormatError(
                    f"{path}: has {f.channels} channels, expected mono (1 channel)"
                )
            wave = f.read(dtype=dtype, always_2d=False)
    except (sf.SoundFileError, OSError) as exc:
        raise AudioReadError(f"{path}: cannot decode the audio ({exc})") from None
    if wave.shape[0] == 0:
        raise AudioReadError(f"{path}: holds no samples")
    if dtype == "float32":
        _check_finite(wave, path)
    return np.ascontiguousarray(wave)


def _check_exists(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise AudioReadError(f"{path}: no such audio file")


def _check_finite(wave: np.ndarray, path: str | os.PathLike) -> None:
    finite = np.isfinite(wave)
    if not finite.all():
        at = int(np.argmin(finite))
        raise AudioReadError(f"{path}: sample {at} is {wave[at]} (audio must be finite)")
