"""Resampling when audio is read, checked against an independent reference: scipy's
polyphase resampler (``scipy.signal.resample_poly``, a Kaiser-windowed FIR, nothing shared
with soxr). scipy is a dev dependency: this module fails, never skips, without it.

Tolerances (relative RMS error, 10 ms cut at each end where the two filters' edge
transients differ):

* tones of 440 Hz, 3 kHz and 6 kHz, 44.1 kHz -> 16 kHz: 2e-3 (measured about 8e-4);
* a speech-like signal (the synthesizer at 44.1 kHz), its content below 7 kHz: 3e-3 (about
  6e-4); the whole band: 1.5e-2 (about 7e-3, the two anti-aliasing filters differ between
  7 and 8 kHz, where soxr's is flat to 91 % of Nyquist and scipy's rolls off earlier).

Each tolerance is at least 5x under the error of the same comparison with the source's rate
mislabelled by 1 % (the last test), so a wrong rate or a broken conversion fails it.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from cpc_fast.data.audio import read_audio
from cpc_fast.data.speech_synth import synthesize, voice_for_speaker

SOURCE, TARGET = 44100, 16000
UP, DOWN = 160, 441  # 16000 / 44100 in lowest terms
EDGE = TARGET // 100  # 10 ms


def _relative_rms(got: np.ndarray, reference: np.ndarray) -> float:
    n = min(got.shape[0], reference.shape[0])
    got, reference = got[EDGE : n - EDGE], reference[EDGE : n - EDGE]
    return float(np.sqrt(np.mean((got - reference) ** 2) / np.mean(reference**2)))


def _below(wave: np.ndarray, hz: float) -> np.ndarray:
    """``wave`` (n,) with every FFT bin at or above ``hz`` removed."""
    spectrum = np.fft.rfft(wave)
    spectrum[np.fft.rfftfreq(wave.shape[0], 1 / TARGET) >= hz] = 0
    return np.fft.irfft(spectrum, wave.shape[0])


def _speech() -> np.ndarray:
    """3 s of the synthesizer's speech-like signal rendered at 44.1 kHz: (132300,) float32."""
    rng = np.random.default_rng(0)
    wave = synthesize(3.0, voice_for_speaker("7"), rng=rng, sample_rate=SOURCE)
    return wave.astype(np.float32)


def _read_at_16k(tmp_path, wave: np.ndarray, rate: int = SOURCE) -> np.ndarray:
    path = tmp_path / "source.wav"
    sf.write(path, wave, rate, subtype="FLOAT")
    return read_audio(path).astype(np.float64)


@pytest.mark.parametrize("hz", [440.0, 3000.0, 6000.0])
def test_tones_agree_with_resample_poly(tmp_path, hz: float) -> None:
    t = np.arange(2 * SOURCE) / SOURCE
    tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    got = _read_at_16k(tmp_path, tone)
    reference = resample_poly(tone.astype(np.float64), UP, DOWN)
    assert got.shape == reference.shape == (2 * TARGET,)
    assert _relative_rms(got, reference) < 2e-3


def test_speech_like_signal_agrees_with_resample_poly(tmp_path) -> None:
    speech = _speech()
    got = _read_at_16k(tmp_path, speech)
    reference = resample_poly(speech.astype(np.float64), UP, DOWN)
    assert got.shape == reference.shape
    assert _relative_rms(_below(got, 7000), _below(reference, 7000)) < 3e-3
    assert _relative_rms(got, reference) < 1.5e-2


def test_stereo_is_the_average_of_its_channels_resampled(tmp_path) -> None:
    speech = _speech()
    left, right = 1.5 * speech, 0.5 * speech  # averages to `speech`
    got = _read_at_16k(tmp_path, np.stack([left, right], axis=1))
    reference = resample_poly(speech.astype(np.float64), UP, DOWN)
    assert _relative_rms(_below(got, 7000), _below(reference, 7000)) < 3e-3


def test_a_mislabelled_rate_fails_the_tolerances(tmp_path) -> None:
    """The tolerances above can fail: the same speech read as if it were 1 % faster."""
    speech = _speech()
    got = _read_at_16k(tmp_path, speech, rate=44541)  # 44100 * 1.01 (nearest integer)
    reference = resample_poly(speech.astype(np.float64), UP, DOWN)
    error = _relative_rms(_below(got, 7000), _below(reference, 7000))
    assert error > 5 * 3e-3
