"""A speech-like source-filter synthesizer: deterministic, NumPy only, no downloads.

It gives the library a built-in corpus (CPC pre-training without data, tests, the demo) and
gives emotion experiments a controllable speaker and prosody. It is not a text-to-speech
system: it produces syllable-like sequences that share the statistics CPC learns from, i.e.
a pitched, formant-filtered voice that changes every 10-50 ms and differs between speakers.

Model, per utterance:

* **Syllables.** A run of syllables, each an optional onset consonant (a fricative noise
  burst, a plosive burst, or a quiet voiced nasal) followed by a voiced vowel nucleus with a
  rise-sustain-decay amplitude envelope. About a third of the syllables are stressed
  (louder, with a pitch accent). Phrases are separated by pauses.
* **Voice source.** A glottal-flow pulse train (Rosenberg-like pulses, differentiated for
  lip radiation) following a smooth F0 contour (declination over the phrase, accents on
  stressed syllables, a final fall before a pause), with per-cycle jitter (period) and
  shimmer (amplitude), plus pulsatile aspiration noise (breathiness).
* **Vocal tract.** A cascade of four formant resonators whose frequencies glide between
  vowel targets (Hillenbrand-style adult male averages scaled by the speaker's
  ``tract_scale``), applied per 8-ms hop through a short-time Fourier transform.
* **Spectral tilt.** A gain of ``tilt`` dB per octave around 500 Hz on the whole signal.
* **Level.** The active (non-pause) part is normalised to ``REFERENCE_RMS`` (-26 dBFS),
  then ``loudness_db`` is applied; where that would push a peak beyond ``LIMITER_KNEE`` a
  smooth peak limiter turns the gain down locally (no clipping), so the output always lies
  within [-0.9, 0.9].
  A white noise floor at ``NOISE_FLOOR_RMS`` (60 dB below the reference) fills pauses.

Usage::

    rng = np.random.default_rng(0)
    voice = voice_for_speaker("spk-7", seed=0)
    wave = synthesize(10.0, voice, Prosody(rate=1.3, loudness_db=4.0), rng=rng)  # (160000,)

The same ``(duration_s, voice, prosody)`` and an identically seeded ``rng`` give identical
samples. Generating 10 s takes a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The parameters are re-exported: synthesize(duration, voice, prosody) is this module's API.
from cpc_fast.data.voice import Prosody, Voice, random_voice, voice_for_speaker
from cpc_fast.errors import UserInputError

SAMPLE_RATE = 16000
REFERENCE_RMS = 0.05  # -26 dBFS: active speech level at loudness_db = 0
NOISE_FLOOR_RMS = REFERENCE_RMS * 1e-3  # background noise, independent of loudness_db
LIMITER_KNEE = 0.9  # the peak limiter keeps every sample within this magnitude
_TILT_PIVOT_HZ = 500.0  # the spectral-tilt gain is 0 dB here
_FRAME = 512  # STFT frame (32 ms at 16 kHz)
_HOP = 128  # formants are updated every 8 ms
_FRICATIVE_LEVEL = 0.3  # fricative RMS relative to vowel RMS (about -10 dB)

# Vowel formant targets F1..F4 in Hz for an adult male (tract_scale 1.0).
_VOWELS = np.array(
    [
        [270, 2290, 3010, 3500],  # i
        [390, 1990, 2550, 3550],  # ɪ
        [530, 1840, 2480, 3500],  # ɛ
        [660, 1720, 2410, 3450],  # æ
        [730, 1090, 2440, 3400],  # ɑ
        [570, 840, 2410, 3400],  # ɔ
        [440, 1020, 2240, 3350],  # ʊ
        [300, 870, 2240, 3350],  # u
        [640, 1190, 2390, 3450],  # ʌ
        [490, 1350, 1690, 3300],  # ɝ
    ],
    dtype=np.float64,
)
_NASAL = np.array([250.0, 1100.0, 2300.0, 3300.0])  # a nasal murmur, roughly
_BANDWIDTHS = np.array([80.0, 110.0, 160.0, 250.0])  # formant bandwidths in Hz
# Noise-burst spectra: (centre Hz, bandwidth Hz) for s, sh, f/th-like and three plosives.
_FRICATIVES = ((5500.0, 2500.0), (3200.0, 1500.0), (4500.0, 6000.0))
_PLOSIVES = ((1500.0, 1500.0), (4000.0, 2500.0), (2500.0, 2000.0))


@dataclass
class _Plan:
    """Sample-level controls for one utterance of ``n`` samples."""

    voiced_env: np.ndarray  # (n,) voiced-source amplitude
    noise_env: np.ndarray  # (n,) burst-noise amplitude
    log_f0: np.ndarray  # (n,) natural log of F0 in Hz
    knot_times: np.ndarray  # (M,) samples where the formant targets hold
    knot_formants: np.ndarray  # (M, 4) formant targets in Hz
    noise_centre: np.ndarray  # (n,) centre frequency of the active burst
    noise_bandwidth: np.ndarray  # (n,) its bandwidth


def _ramp_envelope(length: int, attack: int, release: int) -> np.ndarray:
    """Raised-cosine attack, flat top, raised-cosine release; ``(length,)``."""
    env = np.ones(length)
    attack, release = min(attack, length // 2), min(release, length // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release > 0:
        env[length - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def _plan_utterance(
    n: int, sr: int, voice: Voice, prosody: Prosody, rng: np.random.Generator
) -> _Plan:
    voiced_env = np.zeros(n)
    noise_env = np.zeros(n)
    noise_centre = np.full(n, 4000.0)
    noise_bandwidth = np.full(n, 3000.0)
    f0_times: list[float] = [0.0]
    f0_semitones: list[float] = [0.0]
    knot_times: list[float] = []
    knot_formants: list[np.ndarray] = []
    vowel_scale = voice.tract_scale * rng.uniform(0.97, 1.03, size=4)

    mean_syllable = sr / (voice.syllable_rate * prosody.rate)
    pause_prob = min(0.9, 0.12 * prosody.pause_rate)
    t = int(min(rng.uniform(0.03, 0.2) * sr, 0.1 * n))
    phrase_start = t
    while t < n:
        length = max(int(mean_syllable * rng.lognormal(0.0, 0.25)), int(0.06 * sr))
        stressed = rng.random() < 0.35
        onset_kind = rng.choice(4, p=[0.3, 0.3, 0.2, 0.2])  # none, fricative, plosive, nasal
        onset = 0
        if onset_kind == 1:
            onset = int(length * rng.uniform(0.25, 0.4))
            centre, bandwidth = _FRICATIVES[rng.integers(len(_FRICATIVES))]
            _put(noise_env, t, _ramp_envelope(onset, onset // 4, onset // 4))
        elif onset_kind == 2:
            onset = int(length * rng.uniform(0.1, 0.18))
            burst = min(onset, int(rng.uniform(0.008, 0.025) * sr))
            centre, bandwidth = _PLOSIVES[rng.integers(len(_PLOSIVES))]
            _put(noise_env, t + onset - burst, 0.8 * _ramp_envelope(burst, 16, burst // 2))
        elif onset_kind == 3:
            onset = int(length * rng.uniform(0.15, 0.3))
            _put(voiced_env, t, 0.3 * _ramp_envelope(onset, onset // 3, 0))
            knot_times.append(t + onset / 2)
            knot_formants.append(_NASAL * vowel_scale)
        if onset_kind in (1, 2):
            noise_centre[t : t + onset] = centre * rng.uniform(0.9, 1.1)
            noise_bandwidth[t : t + onset] = bandwidth
        nucleus = length - onset
        peak = 1.0 if stressed else rng.uniform(0.45, 0.7)
        attack = int(nucleus * rng.uniform(0.15, 0.3))
        release = int(nucleus * rng.uniform(0.3, 0.5))
        _put(voiced_env, t + onset, peak * _ramp_envelope(nucleus, attack, release))
        vowel = _VOWELS[rng.integers(len(_VOWELS))] * vowel_scale
        centre_t = t + onset + nucleus / 2
        knot_times.append(centre_t)
        knot_formants.append(vowel)

        t += length
        pause = rng.random() < pause_prob
        declination = -1.2 * (centre_t - phrase_start) / sr  # semitones per second
        accent = rng.uniform(1.5, 4.0) if stressed else rng.uniform(-1.0, 1.0)
        f0_times.append(centre_t)
        f0_semitones.append(max(declination, -6.0) + accent - (2.5 if pause else 0.0))
        if pause:
            t += int(rng.uniform(0.15, 0.5) * sr)
            phrase_start = t

    if not knot_times:
        knot_times, knot_formants = [0.0], [_VOWELS[4] * vowel_scale]
    # A smooth F0 contour: piecewise-linear through the syllable targets, then ~40 ms
    # moving-average smoothing (twice) so accents glide instead of stepping.
    excursion = np.interp(np.arange(n), f0_times, f0_semitones)
    excursion = _smooth(_smooth(excursion, int(0.04 * sr)), int(0.04 * sr))
    semitones = prosody.pitch_shift_semitones + prosody.pitch_range * excursion
    log_f0 = math.log(voice.f0_hz) + semitones * (math.log(2.0) / 12.0)
    return _Plan(
        voiced_env=_smooth(voiced_env, int(0.005 * sr)),
        noise_env=noise_env,
        log_f0=log_f0,
        knot_times=np.asarray(knot_times, dtype=np.float64),
        knot_formants=np.asarray(knot_formants, dtype=np.float64),
        noise_centre=noise_centre,
        noise_bandwidth=noise_bandwidth,
    )


def _put(target: np.ndarray, start: int, values: np.ndarray) -> None:
    """Adds ``values`` into ``target[start:]``, dropping what runs past the end."""
    end = min(target.shape[0], start + values.shape[0])
    if end > start:
        target[start:end] += values[: end - start]


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average over ``width`` samples, the edges extended by their values."""
    if width <= 1:
        return x
    left = width // 2
    padded = np.pad(x, (left + 1, width - left - 1), mode="edge")
    c = np.cumsum(padded)
    return (c[width:] - c[:-width]) / width


def _glottal_source(
    log_f0: np.ndarray, sr: int, voice: Voice, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Differentiated glottal-flow pulses with jitter and shimmer, and the flow itself."""
    f0 = np.exp(log_f0)
    cycles = int(np.sum(f0) / sr * 1.3) + 2  # jitter can lengthen the pulse count a little
    jitter = np.clip(1.0 + voice.jitter * rng.standard_normal(cycles), 0.5, 1.5)
    shimmer = np.clip(1.0 + voice.shimmer * rng.standard_normal(cycles), 0.2, 1.8)
    # Jitter perturbs the instantaneous frequency for the duration of one cycle.
    cycle = np.minimum(np.cumsum(f0 / sr).astype(np.int64), cycles - 1)
    phase = np.cumsum(f0 * jitter[cycle] / sr)
    cycle = np.minimum(phase.astype(np.int64), cycles - 1)
    frac = phase - np.floor(phase)
    rise, fall = 0.4, 0.16  # opening and closing phases, as fractions of a period
    flow = np.where(
        frac < rise,
        0.5 - 0.5 * np.cos(np.pi * frac / rise),
        np.where(frac < rise + fall, np.cos(0.5 * np.pi * (frac - rise) / fall), 0.0),
    )
    flow *= shimmer[cycle]
    return np.diff(flow, prepend=flow[0]), flow


def _resonance(freqs: np.ndarray, centre: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """Magnitude of a 2nd-order resonator with unit gain at DC; broadcasts to (frames, bins)."""
    c2 = centre**2
    return c2 / np.sqrt((c2 - freqs**2) ** 2 + (bandwidth * freqs) ** 2)


def _frames(x: np.ndarray) -> np.ndarray:
    """(..., n) -> (..., frames, _FRAME) float32 windowed frames, hop _HOP, padded by one
    frame on each side so that every sample is covered by four frames."""
    pad = [(0, 0)] * (x.ndim - 1) + [(_FRAME, _FRAME + (-x.shape[-1]) % _HOP)]
    padded = np.pad(x.astype(np.float32), pad)
    view = np.lib.stride_tricks.sliding_window_view(padded, _FRAME, axis=-1)[..., ::_HOP, :]
    return view * _WINDOW


# sqrt-Hann analysis and synthesis windows: their product is a Hann window, which sums to 2
# at 75 % overlap, so the overlap-add divides by 2.
_WINDOW = np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_FRAME) / _FRAME)).astype(np.float32)


def _overlap_add(frames: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_frames`: (..., frames, _FRAME) -> (..., n)."""
    *lead, count, _ = frames.shape
    per = _FRAME // _HOP
    blocks = np.zeros((*lead, count + per - 1, _HOP), dtype=np.float32)
    windowed = (frames * _WINDOW).reshape(*lead, count, per, _HOP)
    for j in range(per):
        blocks[..., j : j + count, :] += windowed[..., j, :]
    return blocks.reshape(*lead, -1)[..., _FRAME : _FRAME + n] / 2.0


def _rms(x: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x[mask] ** 2))) if mask.any() else 0.0


def _limit(x: np.ndarray) -> np.ndarray:
    """A peak limiter: a smooth gain that keeps every sample within ``LIMITER_KNEE``.

    The gain is computed per 4-ms block (the knee over the block's peak, the minimum of each
    block and its neighbours) and interpolated between block centres, so it never exceeds
    what a sample needs and changes slowly: peaks are turned down, the waveform's shape is
    kept (no clipping).
    """
    peak = np.abs(x).max(initial=0.0)
    if peak <= LIMITER_KNEE:
        return x
    block = 64
    n = x.shape[0]
    padded = np.pad(np.abs(x), (0, (-n) % block))
    need = np.minimum(1.0, LIMITER_KNEE / np.maximum(padded.reshape(-1, block).max(1), 1e-12))
    need = np.minimum(need, np.minimum(np.roll(need, 1), np.roll(need, -1)))
    need[0], need[-1] = need[:2].min(), need[-2:].min()  # np.roll wraps around
    centres = np.arange(need.shape[0]) * block + block / 2
    return x * np.interp(np.arange(n), centres, need)


def synthesize(
    duration_s: float,
    voice: Voice,
    prosody: Prosody | None = None,
    *,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """One utterance of ``round(duration_s * sample_rate)`` samples, float32 in (-1, 1).

    Args:
        duration_s: length in seconds (> 0; at least one sample).
        voice: the speaker (:func:`random_voice`, :func:`voice_for_speaker` or explicit).
        prosody: utterance-level modifiers (default neutral); see :class:`Prosody` for what
            each factor changes.
        rng: the only source of randomness: an identically seeded generator reproduces the
            utterance exactly.
        sample_rate: in Hz, 8 kHz or more (formants and bursts reach 7 kHz).

    Returns:
        ``(n,)`` float32 waveform; its active-speech RMS is ``REFERENCE_RMS`` scaled by
        ``prosody.loudness_db``.
    """
    prosody = Prosody() if prosody is None else prosody
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")
    if sample_rate < 8000:
        raise UserInputError(f"`sample_rate` must be at least 8000 Hz, got {sample_rate}")
    n = round(duration_s * sample_rate) if math.isfinite(duration_s) else 0
    if n < 1:
        raise UserInputError(f"`duration_s` must give at least one sample, got {duration_s}")

    plan = _plan_utterance(n, sample_rate, voice, prosody, rng)
    pulses, flow = _glottal_source(plan.log_f0, sample_rate, voice, rng)
    # Aspiration noise is strongest while the glottis is open; pulses are ~0.05 peak.
    breath = 0.05 * voice.breathiness * (0.3 + flow) * rng.standard_normal(n)
    voiced = (pulses + breath) * plan.voiced_env
    noise = rng.standard_normal(n) * plan.noise_env

    spectra = np.fft.rfft(_frames(np.stack([voiced, noise])), axis=-1)  # (2, frames, bins)
    freqs = np.fft.rfftfreq(_FRAME, 1.0 / sample_rate).astype(np.float32)[None, :]  # (1, bins)
    centres = np.arange(spectra.shape[1]) * _HOP - _FRAME // 2  # frame centres in samples

    formants = np.stack(
        [np.interp(centres, plan.knot_times, plan.knot_formants[:, j]) for j in range(4)], 1
    ).astype(np.float32)  # (frames, 4)
    formants = np.minimum(formants, 0.45 * sample_rate)
    # Breathy voices have wider first-formant bandwidths (more glottal damping).
    bandwidths = _BANDWIDTHS * np.array([1.0 + 2.0 * voice.breathiness, 1.0, 1.0, 1.0])
    tract = _resonance(freqs, formants[:, 0:1], np.float32(bandwidths[0]))
    for j in range(1, 4):
        tract *= _resonance(freqs, formants[:, j : j + 1], np.float32(bandwidths[j]))
    idx = np.clip(centres, 0, n - 1)
    burst_centre = np.minimum(plan.noise_centre[idx], 0.45 * sample_rate).astype(np.float32)
    burst_centre = burst_centre[:, None]
    burst = _resonance(freqs, burst_centre, plan.noise_bandwidth[idx].astype(np.float32)[:, None])
    burst *= (freqs / (freqs + 0.4 * burst_centre)) ** 2  # bursts carry little low end

    tilt = voice.spectral_tilt_db_per_octave + prosody.spectral_tilt_db_per_octave
    octaves = np.log2(np.maximum(freqs, 60.0) / _TILT_PIVOT_HZ)
    tilt_gain = (10.0 ** (tilt * octaves / 20.0)).astype(np.float32)
    tilt_gain[:, 0] = 0.0  # no DC

    spectra[0] *= tract * tilt_gain
    spectra[1] *= burst * tilt_gain
    voiced_out, noise_out = _overlap_add(np.fft.irfft(spectra, _FRAME, axis=-1), n)
    voiced_mask = plan.voiced_env > 0.05
    noise_mask = plan.noise_env > 0.05
    voiced_rms, noise_rms = _rms(voiced_out, voiced_mask), _rms(noise_out, noise_mask)
    wave = voiced_out / voiced_rms if voiced_rms > 0 else voiced_out
    if noise_rms > 0:
        wave = wave + noise_out * (_FRICATIVE_LEVEL / noise_rms)
    active = voiced_mask | noise_mask
    level = _rms(wave, active)
    gain = REFERENCE_RMS * 10.0 ** (prosody.loudness_db / 20.0)
    wave = wave * (gain / level) if level > 0 else wave * 0.0
    # A recording-noise floor 60 dB below the reference level, so pauses are not digital zero.
    wave += NOISE_FLOOR_RMS * rng.standard_normal(n)
    return _limit(wave).astype(np.float32)


__all__ = [
    "LIMITER_KNEE",
    "NOISE_FLOOR_RMS",
    "REFERENCE_RMS",
    "SAMPLE_RATE",
    "Prosody",
    "Voice",
    "random_voice",
    "synthesize",
    "voice_for_speaker",
]
