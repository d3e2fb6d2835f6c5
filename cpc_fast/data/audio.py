"""Reading audio files with soundfile: 16 kHz mono waveforms, checked, as 1-D numpy arrays.

    info = audio_info("a.flac")           # AudioInfo(frames, sample_rate, channels): header only
    wave = read_audio("a.flac")           # (n,) float32 in [-1, 1)
    wave = read_audio("a.wav", dtype="int16")   # (n,) int16, half the memory

Nothing is resampled or down-mixed: a file at another rate or with several channels raises
:class:`AudioFormatError`; an unreadable, empty or non-finite one, or one that holds fewer
samples than its header promises (a truncated file), :class:`AudioReadError`; both are
:class:`~cpc_fast.errors.UserInputError` and name the file. A file that cannot be opened for
want of resources (too many open files, no memory) is not a bad file: that raises the
``OSError`` itself, naming the file, so callers that skip bad files stop on it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from cpc_fast.errors import UserInputError

SAMPLE_RATE = 16_000
_DTYPES = ("float32", "int16")
# errnos of the machine, not of the file: never a reason to skip a file
ENVIRONMENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size open


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


def is_environment_error(exc: BaseException) -> bool:
    """True for an ``OSError`` of the machine (too many open files, no memory), which says
    nothing about the file being read."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """The header of ``path`` without decoding it (to filter files by length cheaply); a WAV
    file shorter than its header's data size is an :class:`AudioReadError`."""
    with _opened(path) as fh:
        try:
            with sf.SoundFile(fh.fileno(), closefd=False) as f:
                info = AudioInfo(
                    frames=int(f.frames), sample_rate=f.samplerate, channels=f.channels
                )
        except (sf.SoundFileError, OSError) as exc:
            raise AudioReadError(f"{path}: cannot read the audio header ({_why(exc)})") from None
        _check_wav_size(fh, path)
    return info


def read_audio(
    path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE, dtype: str = "float32"
) -> np.ndarray:
    """The (n,) waveform of a mono file at ``sample_rate``, as float32 or int16.

    float32 samples lie in [-1, 1) (int16 / 32768 for PCM files); int16 keeps the PCM values.
    The format is checked from the header before anything is decoded.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    with _opened(path) as fh:
        _check_wav_size(fh, path)
        try:
            with sf.SoundFile(fh.fileno(), closefd=False) as f:
                if f.samplerate != sample_rate:
                    raise AudioFormatError(
                        f"{path}: sample rate is {f.samplerate} Hz, expected {sample_rate} Hz "
                        "(resample it first, e.g. with sox or ffmpeg)"
                    )
                if f.channels != 1:
                    raise AudioFormatError(
                        f"{path}: has {f.channels} channels, expected mono (1 channel)"
                    )
                promised = f.frames
                wave = f.read(dtype=dtype, always_2d=False)
        except (sf.SoundFileError, OSError) as exc:
            raise AudioReadError(f"{path}: cannot decode the audio ({_why(exc)})") from None
    if wave.shape[0] == 0:
        raise AudioReadError(f"{path}: holds no samples")
    if wave.shape[0] < promised:
        raise AudioReadError(
            f"{path}: decodes to {wave.shape[0]} samples, its header promises {promised} "
            "(a truncated file?)"
        )
    if dtype == "float32":
        _check_finite(wave, path)
    return np.ascontiguousarray(wave)


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[io.RawIOBase]:
    """The file, opened once (unbuffered, so that the decoder reading its descriptor starts
    where a seek left it). Python's open says why a file cannot be opened, where the decoder
    says only "System error": a missing or forbidden file is a bad file, the machine's own
    limits are an ``OSError``."""
    if not os.path.isfile(path):  # a folder, or a FIFO that open() would wait on
        raise AudioReadError(f"{path}: no such audio file")
    try:
        fh = open(path, "rb", buffering=0)
    except OSError as exc:
        raise _unreadable(exc, path, "open") from None
    with fh:
        yield fh


def _unreadable(exc: OSError, path: str | os.PathLike, doing: str) -> Exception:
    """The error to raise for an ``OSError`` on ``path``: the machine's own (naming the file)
    or a bad file."""
    if is_environment_error(exc):
        return OSError(exc.errno, exc.strerror, str(path))
    return AudioReadError(f"{path}: cannot {doing} the audio file ({exc.strerror})")


def _why(exc: Exception) -> str:
    """The decoder's reason without its "Error opening <descriptor>:" prefix."""
    return getattr(exc, "error_string", None) or str(exc)


def _check_wav_size(fh: io.RawIOBase, path: str | os.PathLike) -> None:
    """A RIFF/WAVE file whose data chunk claims more bytes than the file holds is truncated
    (the decoder quietly reads what is there). Leaves ``fh`` at its start."""
    try:
        _check_wav_chunks(fh, path)
        fh.seek(0)
    except OSError as exc:
        raise _unreadable(exc, path, "read") from None


def _check_wav_chunks(fh: io.RawIOBase, path: str | os.PathLike) -> None:
    fh.seek(0)
    if fh.read(4) != b"RIFF":
        return
    fh.seek(8)
    if fh.read(4) != b"WAVE":
        return
    block_align = 0
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return
        chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"fmt ":
            fmt = fh.read(min(size, 16))
            block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            fh.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
        elif chunk == b"data":
            held = os.fstat(fh.fileno()).st_size - fh.tell()
            if size not in _WAV_UNKNOWN_SIZES and size > held and block_align:
                raise AudioReadError(
                    f"{path}: the header promises {size // block_align} samples, the file "
                    f"holds {held // block_align} (a truncated file)"
                )
            return
        else:
            fh.seek(size + (size & 1), os.SEEK_CUR)


def _check_finite(wave: np.ndarray, path: str | os.PathLike) -> None:
    finite = np.isfinite(wave)
    if not finite.all():
        at = int(np.argmin(finite))
        raise AudioReadError(f"{path}: sample {at} is {wave[at]} (audio must be finite)")
