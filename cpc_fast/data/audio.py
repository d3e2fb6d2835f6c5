"""Reading audio files with soundfile: mono waveforms at the model's rate, checked, as 1-D
numpy arrays.

    info = audio_info("a.mp3")            # AudioInfo(frames, sample_rate, channels): header only
    wave = read_audio("a.flac")           # (n,) float32 in [-1, 1), 16 kHz mono
    wave = read_audio("a.wav", dtype="int16")   # (n,) int16, half the memory
    wave = read_audio("a.wav", dtype="auto")    # int16 for 16-bit PCM at the rate, else float32

Any format the installed soundfile (libsndfile) decodes is read: WAV, FLAC, OGG/Vorbis,
Opus, MP3, AIFF, ... A file at another rate or with several channels is converted: its
channels are averaged to mono, then it is resampled with soxr (``"HQ"``: a linear-phase
filter flat to 91 % of the lower Nyquist frequency, 20-bit precision). A file that needs no
conversion is returned as decoded, sample for sample. :class:`Conversions` counts what was
converted so that a command reports it once, not per file.

An unreadable, empty or non-finite file, or one that holds fewer samples than its header
promises (a truncated file), raises :class:`AudioReadError`, a
:class:`~cpc_fast.errors.UserInputError` naming the file. A file that cannot be opened for
want of resources (too many open files, no memory) is not a bad file: that raises the
``OSError`` itself, naming the file, so callers that skip bad files stop on it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from cpc_fast.errors import UserInputError

SAMPLE_RATE = 16_000
_DTYPES = ("float32", "int16", "auto")
RESAMPLE_QUALITY = "HQ"  # soxr's high quality: transparent for 16-bit audio, fast
# errnos of the machine, not of the file: never a reason to skip a file
ENVIRONMENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size open


class AudioReadError(UserInputError):
    """The file is missing, cannot be decoded, holds no samples or holds NaN/Inf."""


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

    def needs_conversion(self, sample_rate: int = SAMPLE_RATE) -> bool:
        """True when reading it at ``sample_rate`` averages channels or resamples."""
        return self.sample_rate != sample_rate or self.channels != 1

    def samples_at(self, sample_rate: int = SAMPLE_RATE) -> int:
        """The samples :func:`read_audio` gives at ``sample_rate`` (soxr rounds the
        resampled length to the nearest integer)."""
        if self.sample_rate == sample_rate:
            return self.frames
        return round(self.frames * sample_rate / self.sample_rate)


@dataclass
class Conversions:
    """What :func:`read_audio` converts for a set of files, counted from their headers, so
    that a command says it once: ``summary()`` -> "3 of 5 audio files converted to 16000 Hz
    mono when read (resampled 2 from 44100 Hz, 1 from 48000 Hz; averaged to mono 2 from 2
    channels)"."""

    sample_rate: int = SAMPLE_RATE
    files: int = 0  # files seen
    rates: Counter = field(default_factory=Counter)  # source rate -> files resampled
    channels: Counter = field(default_factory=Counter)  # channel count -> files averaged
    converted: int = 0

    def add(self, info: AudioInfo) -> None:
        """Counts one file by its header."""
        self.files += 1
        if info.sample_rate != self.sample_rate:
            self.rates[info.sample_rate] += 1
        if info.channels != 1:
            self.channels[info.channels] += 1
        self.converted += info.needs_conversion(self.sample_rate)

    def summary(self) -> str | None:
        """One line, or None when nothing is converted."""
        if not self.converted:
            return None
        parts = []
        if self.rates:
            rates = ", ".join(f"{n} from {rate} Hz" for rate, n in sorted(self.rates.items()))
            parts.append(f"resampled {rates}")
        if self.channels:
            chans = ", ".join(f"{n} from {c} channels" for c, n in sorted(self.channels.items()))
            parts.append(f"averaged to mono {chans}")
        return (
            f"{self.converted} of {self.files} audio files converted to {self.sample_rate} Hz "
            f"mono when read ({'; '.join(parts)})"
        )


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
    """The (n,) mono waveform of ``path`` at ``sample_rate``, as float32 or int16.

    float32 samples lie in [-1, 1) (int16 / 32768 for PCM files); int16 keeps the PCM values
    (a converted file is rounded to them). ``"auto"`` is int16 when the file holds 16-bit PCM
    that needs no conversion (nothing is lost), float32 otherwise. Several channels are
    averaged, another rate is resampled with soxr (module docstring); a mono file at
    ``sample_rate`` is returned as decoded.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    with _opened(path) as fh:
        _check_wav_size(fh, path)
        try:
            with sf.SoundFile(fh.fileno(), closefd=False) as f:
                info = AudioInfo(int(f.frames), f.samplerate, f.channels)
                convert = info.needs_conversion(sample_rate)
                if dtype == "auto":
                    dtype = "int16" if f.subtype == "PCM_16" and not convert else "float32"
                # A conversion works on float samples; 2-D keeps the channel axis to average.
                wave = f.read(dtype="float32" if convert else dtype, always_2d=convert)
        except (sf.SoundFileError, OSError) as exc:
            raise AudioReadError(f"{path}: cannot decode the audio ({_why(exc)})") from None
    if wave.shape[0] == 0:
        raise AudioReadError(f"{path}: holds no samples")
    if wave.shape[0] < info.frames:
        raise AudioReadError(
            f"{path}: decodes to {wave.shape[0]} samples, its header promises {info.frames} "
            "(a truncated file?)"
        )
    if wave.dtype == np.float32:
        _check_finite(wave, path)
    if convert:
        wave = _convert(wave, info.sample_rate, sample_rate)
        if dtype == "int16":
            wave = np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(wave)


def _convert(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """(n, channels) float32 at ``rate`` -> (m,) float32 mono at ``sample_rate``,
    m = round(n * sample_rate / rate)."""
    # Averaging first: one channel to resample instead of several (both steps are linear).
    mono = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1, dtype=np.float32)
    if rate == sample_rate:
        return mono
    return soxr.resample(mono, rate, sample_rate, quality=RESAMPLE_QUALITY)


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
    """``wave``: (n,) or (n, channels)."""
    finite = np.isfinite(wave)
    if not finite.all():
        at = int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
        raise AudioReadError(f"{path}: sample {at} is {wave[at]} (audio must be finite)")
