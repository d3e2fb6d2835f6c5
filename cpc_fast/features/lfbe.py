"""40-d log mel filterbank energies (LFBE), the paper's ``Sup`` features, in plain torch.

Framing (chosen so LFBE frames line up one-to-one with CPC frames):

* 16 kHz input, 25 ms (400-sample) Hamming window, 10 ms (160-sample) hop.
* A waveform of n samples gives exactly floor(n / 160) frames, like the CPC encoder. Frame t
  is the window over samples [160 t − 120, 160 t + 280), i.e. centred on the middle of its
  10 ms hop; samples outside the waveform are zeros. Because the outside is zero, a
  waveform zero-padded inside a batch gives bit-for-bit the same first floor(n / 160) frames
  as the waveform alone.
* Each window is zero-padded to a 512-point FFT; power spectrum |X|²; 40 triangular filters
  on the HTK mel scale (mel = 2595 log10(1 + f / 700)) from 0 Hz to 8 kHz, unnormalised
  (peak 1); natural log with a floor: log(max(E, 1e-10)).
* No pre-emphasis and no dither, so features are deterministic.

A traced graph (ONNX export) cannot hold ``torch.stft``'s complex output, so there the same
windowed DFT is a strided convolution with the window times cosine and sine kernels
(:meth:`LFBE.power_by_convolution`): the same spectrum up to float rounding.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LFBEConfig:
    sample_rate: int = 16000
    num_mels: int = 40
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-10

    def to_dict(self) -> dict:
        return asdict(self)


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(config: LFBEConfig = LFBEConfig()) -> torch.Tensor:
    """(n_fft // 2 + 1, num_mels) float32 matrix of triangular HTK-mel filters."""
    n_bins = config.n_fft // 2 + 1
    bin_hz = torch.arange(n_bins, dtype=torch.float64) * config.sample_rate / config.n_fft
    edges = mel_to_hz(
        torch.linspace(
            hz_to_mel(config.f_min),
            hz_to_mel(config.f_max),
            config.num_mels + 2,
            dtype=torch.float64,
        )
    )  # (num_mels + 2,)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # each (num_mels,)
    f = bin_hz.unsqueeze(1)  # (n_bins, 1)
    rising = (f - lower) / (center - lower)
    falling = (upper - f) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LFBE(torch.nn.Module):
    """(B, T) waveform -> (B, floor(T / 160), 40) log mel filterbank energies."""

    def __init__(self, config: LFBEConfig = LFBEConfig()) -> None:
        super().__init__()
        if config.win_length > config.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        self.config = config
        self.register_buffer(
            "window", torch.hamming_window(config.win_length, periodic=False), persistent=False
        )
        self.register_buffer("filters", mel_filterbank(config), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if wave.dim() != 2:
            raise ValueError(f"expected wave of shape (B, T), got {tuple(wave.shape)}")
        frames = wave.shape[1] // cfg.hop_length
        if frames < 1:
            raise ValueError(f"waveform of {wave.shape[1]} samples is shorter than one hop")
        if torch.jit.is_tracing():
            power = self.power_by_convolution(wave)
        else:
            power = self.power(wave)
        energies = power.transpose(1, 2) @ self.filters  # (B, L, num_mels)
        return torch.log(torch.clamp(energies, min=cfg.log_floor))

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, n_fft // 2 + 1, floor(T / hop)) power spectrum, by ``torch.stft``."""
        cfg = self.config
        frames = wave.shape[1] // cfg.hop_length
        # torch.stft centres the win_length window inside each n_fft frame, so a frame that
        # starts at s weights samples [s + offset, s + offset + win_length).
        offset = (cfg.n_fft - cfg.win_length) // 2
        left = (cfg.win_length - cfg.hop_length) // 2 + offset  # window starts 120 early
        needed = (frames - 1) * cfg.hop_length + cfg.n_fft
        right = max(0, needed - left - wave.shape[1])
        x = torch.nn.functional.pad(wave.float(), (left, right))
        spec = torch.stft(
            x,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )[..., :frames]  # (B, n_fft // 2 + 1, L)
        return spec.real.square() + spec.imag.square()

    def power_by_convolution(self, wave: torch.Tensor) -> torch.Tensor:
        """:meth:`power` as one strided convolution (real ops only, as ONNX has them): frame
        t's window starts 120 samples before 160 t, and its 400 weighted samples are
        correlated with the cosines and sines of the n_fft-point DFT at their places."""
        cfg = self.config
        frames = wave.shape[1] // cfg.hop_length
        left = (cfg.win_length - cfg.hop_length) // 2
        right = cfg.win_length - left  # enough for the last frame, whatever T % hop is
        x = torch.nn.functional.pad(wave.float(), (left, right)).unsqueeze(1)  # (B, 1, T')
        kernels = _dft_kernels(cfg).to(x.device)
        both = torch.nn.functional.conv1d(x, kernels, stride=cfg.hop_length)[..., :frames]
        bins = cfg.n_fft // 2 + 1
        return both[:, :bins].square() + both[:, bins:].square()  # (B, bins, L)


@functools.cache
def _dft_kernels(config: LFBEConfig) -> torch.Tensor:
    """(2 (n_fft // 2 + 1), 1, win_length): the Hamming window times the real and imaginary
    parts of the DFT's basis, sample m of the window sitting at place m + (n_fft - win) // 2
    of its n_fft frame (where ``torch.stft`` centres it). Built in float64."""
    offset = (config.n_fft - config.win_length) // 2
    place = torch.arange(config.win_length, dtype=torch.float64) + offset
    k = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    angle = 2 * torch.pi * k * place / config.n_fft  # (bins, win)
    window = torch.hamming_window(config.win_length, periodic=False, dtype=torch.float64)
    kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    return kernels.to(torch.float32).unsqueeze(1)


def lfbe(wave: torch.Tensor, config: LFBEConfig = LFBEConfig()) -> torch.Tensor:
    """Functional form: (T,) -> (L, 40) or (B, T) -> (B, L, 40), L = floor(T / 160)."""
    module = LFBE(config).to(wave.device)
    if wave.dim() == 1:
        return module(wave.unsqueeze(0))[0]
    return module(wave)


__all__ = ["LFBE", "LFBEConfig", "hz_to_mel", "lfbe", "mel_filterbank", "mel_to_hz"]
