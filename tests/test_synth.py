"""The speech-like synthesizer: determinism, lengths, levels, and that each prosody factor
moves the quantity it documents, measured from the waveform with independent estimators."""

from __future__ import annotations

import numpy as np
import pytest

from cpc_fast.data.speech_synth import (
    LIMITER_KNEE,
    REFERENCE_RMS,
    Prosody,
    Voice,
    random_voice,
    synthesize,
    voice_for_speaker,
)
from cpc_fast.errors import UserInputError

SR = 16000
VOICE = Voice(f0_hz=120.0, tract_scale=1.0, breathiness=0.05, syllable_rate=4.5)


def _wave(prosody: Prosody | None = None, seed: int = 0, seconds: float = 6.0, voice=VOICE):
    return synthesize(seconds, voice, prosody, rng=np.random.default_rng(seed)).astype(np.float64)


def _frame_rms(x: np.ndarray, hop: int = 160) -> np.ndarray:
    n = x.shape[0] // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))


def _f0_track(x: np.ndarray, lo: float = 60.0, hi: float = 500.0) -> np.ndarray:
    """Autocorrelation F0 of loud 40-ms frames (a classic estimator, not the synthesizer's)."""
    frame, hop = 640, 320
    rms = _frame_rms(x, hop)
    loud = np.quantile(rms, 0.6)
    f0 = []
    for i in range(0, x.shape[0] - frame, hop):
        seg = x[i : i + frame]
        if np.sqrt(np.mean(seg**2)) < loud:
            continue
        seg = (seg - seg.mean()) * np.hanning(frame)
        ac = np.correlate(seg, seg, mode="full")[frame - 1 :]
        lags = np.arange(int(SR / hi), int(SR / lo))
        best = lags[np.argmax(ac[lags])]
        if ac[best] > 0.5 * ac[0]:
            f0.append(SR / best)
    return np.asarray(f0)


def _centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.shape[0], 1 / SR)
    return float(np.sum(freqs * power) / np.sum(power))


def _syllable_peaks_per_second(x: np.ndarray) -> float:
    """Local maxima (over +-40 ms) of the smoothed 10-ms RMS envelope per second of sound."""
    smooth = np.ones(7) / 7
    env = np.convolve(np.convolve(_frame_rms(x), smooth, mode="same"), smooth, mode="same")
    neighbourhood = np.lib.stride_tricks.sliding_window_view(np.pad(env, 4), 9).max(axis=1)
    peaks = (env >= neighbourhood) & (env > 0.2 * env.max())
    return peaks.sum() / (np.sum(env > 0.1 * env.max()) * 0.01)


def test_deterministic_from_the_rng() -> None:
    a = _wave(seed=3)
    b = _wave(seed=3)
    c = _wave(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("seconds", [0.001, 0.05, 0.5, 1.2345, 10.0])
def test_lengths_dtype_range(seconds: float) -> None:
    wave = synthesize(seconds, random_voice(np.random.default_rng(1)), rng=np.random.default_rng(0))
    assert wave.shape == (round(seconds * SR),)
    assert wave.dtype == np.float32
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() < 1.0


def test_other_sample_rate() -> None:
    wave = synthesize(1.0, VOICE, rng=np.random.default_rng(0), sample_rate=8000)
    assert wave.shape == (8000,) and np.isfinite(wave).all()


def test_reference_level_and_loudness_db() -> None:
    neutral = _wave()
    frames = _frame_rms(neutral)
    sounding = frames > 0.05 * REFERENCE_RMS  # pauses hold only the noise floor
    assert np.sqrt(np.mean(frames[sounding] ** 2)) == pytest.approx(REFERENCE_RMS, rel=0.1)
    louder = _wave(Prosody(loudness_db=6.0))
    ratio = np.sqrt(np.mean(louder**2) / np.mean(neutral**2))
    assert ratio == pytest.approx(10 ** (6 / 20), rel=0.01)
    quieter = _wave(Prosody(loudness_db=-10.0))
    assert np.sqrt(np.mean(quieter**2) / np.mean(neutral**2)) == pytest.approx(
        10 ** (-10 / 20), rel=0.01
    )


def test_very_loud_is_limited_not_clipped() -> None:
    loud = _wave(Prosody(loudness_db=20.0))
    assert np.abs(loud).max() <= LIMITER_KNEE + 1e-6
    # A clipper leaves plateaus: runs of consecutive samples at the maximum magnitude.
    at_max = np.abs(loud) >= np.abs(loud).max() * (1 - 1e-5)
    assert not np.any(at_max[1:] & at_max[:-1])
    louder_than_neutral = np.sqrt(np.mean(loud**2) / np.mean(_wave() ** 2))
    assert louder_than_neutral > 10 ** (12 / 20)


def test_pitch_shift_moves_median_f0_by_semitones() -> None:
    base = np.median(_f0_track(_wave()))
    up = np.median(_f0_track(_wave(Prosody(pitch_shift_semitones=6.0))))
    down = np.median(_f0_track(_wave(Prosody(pitch_shift_semitones=-4.0))))
    assert 100 < base < 150  # the voice's 120 Hz base, moved by accents and declination
    assert up / base == pytest.approx(2 ** (6 / 12), rel=0.05)
    assert down / base == pytest.approx(2 ** (-4 / 12), rel=0.05)


def test_pitch_range_widens_f0_excursions() -> None:
    spread = {}
    for pitch_range in (0.0, 1.0, 2.5):
        f0 = np.concatenate([_f0_track(_wave(Prosody(pitch_range=pitch_range), s)) for s in (0, 1)])
        spread[pitch_range] = np.std(np.log2(f0)) * 12  # semitones
    assert spread[0.0] < 0.6  # jitter only
    assert spread[0.0] < spread[1.0] < spread[2.5]
    assert spread[2.5] > 2 * spread[1.0] * 0.8


def test_rate_changes_syllables_per_second() -> None:
    def rate(r: float) -> float:
        return np.mean([_syllable_peaks_per_second(_wave(Prosody(rate=r), s)) for s in (0, 1, 2)])

    slow, neutral, fast = rate(0.6), rate(1.0), rate(1.6)
    assert slow < neutral < fast
    assert fast / slow > 1.5  # asked for 2.7x; the smoothing merges some fast syllables


def test_spectral_tilt_moves_the_centroid() -> None:
    centroids = [_centroid(_wave(Prosody(spectral_tilt_db_per_octave=t))) for t in (-4.0, 0.0, 4.0)]
    assert centroids[0] < centroids[1] < centroids[2]


def test_pause_rate_adds_silence() -> None:
    def silence(p: float) -> float:
        x = np.concatenate([_wave(Prosody(pause_rate=p), s, 8.0) for s in (0, 1)])
        return float(np.mean(_frame_rms(x) < 0.01 * REFERENCE_RMS))

    assert silence(0.0) < silence(1.0) < silence(4.0)
    assert silence(0.0) < 0.03  # only the leading silence


def test_voice_identity_factors() -> None:
    female = Voice(f0_hz=220.0, tract_scale=1.18)
    f0_female = np.median(_f0_track(_wave(voice=female)))
    f0_male = np.median(_f0_track(_wave()))
    assert f0_female / f0_male == pytest.approx(220 / 120, rel=0.07)
    # Formants scale with the tract: compare centroids below 4 kHz at the same F0.
    short = _wave(voice=Voice(f0_hz=120.0, tract_scale=1.25))
    long = _wave(voice=Voice(f0_hz=120.0, tract_scale=0.85))

    def low_band_centroid(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.shape[0], 1 / SR)
        keep = freqs < 4000
        return float(np.sum(freqs[keep] * power[keep]) / np.sum(power[keep]))

    assert low_band_centroid(short) > 1.1 * low_band_centroid(long)


def test_speaker_voices_are_stable_and_distinct() -> None:
    assert voice_for_speaker("1089", seed=0) == voice_for_speaker("1089", seed=0)
    assert voice_for_speaker("1089", seed=0) != voice_for_speaker("1089", seed=1)
    assert voice_for_speaker("1089", seed=0) != voice_for_speaker("1090", seed=0)
    rng = np.random.default_rng(0)
    females = [random_voice(rng, "female") for _ in range(20)]
    males = [random_voice(rng, "male") for _ in range(20)]
    assert min(v.f0_hz for v in females) > max(v.f0_hz for v in males)
    assert min(v.tract_scale for v in females) > max(v.tract_scale for v in males)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Prosody(rate=0.0),
        lambda: Prosody(pitch_range=-1.0),
        lambda: Prosody(loudness_db=float("nan")),
        lambda: Voice(f0_hz=5.0),
        lambda: synthesize(0.0, VOICE, rng=np.random.default_rng(0)),
        lambda: synthesize(1.0, VOICE, rng=np.random.default_rng(0), sample_rate=4000),
        lambda: random_voice(np.random.default_rng(0), "other"),
    ],
)
def test_bad_arguments_raise(make) -> None:
    with pytest.raises(UserInputError):
        make()
