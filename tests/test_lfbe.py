"""LFBE against a direct NumPy computation (explicit DFT matrix, filters built in a loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpc_fast.features.lfbe import LFBE, lfbe, mel_filterbank


def _mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def reference_lfbe(x: np.ndarray) -> np.ndarray:
    """Frame t = Hamming window over samples [160 t - 120, 160 t + 280), zeros outside."""
    sr, n_fft, win, hop, n_mels = 16000, 512, 400, 160, 40
    x = np.asarray(x, np.float64)
    frames = x.shape[0] // hop
    padded = np.concatenate([np.zeros(120), x, np.zeros(400)])
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win) / (win - 1))
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), np.arange(win)) / n_fft)
    edges = _hz(np.linspace(_mel(0.0), _mel(8000.0), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    filters = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for i, f in enumerate(bins):
            if lo < f <= mid:
                filters[i, m] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                filters[i, m] = (hi - f) / (hi - mid)
    out = np.zeros((frames, n_mels))
    for t in range(frames):
        seg = padded[t * hop : t * hop + win] * window
        power = np.abs(dft @ seg) ** 2
        out[t] = np.log(np.maximum(power @ filters, 1e-10))
    return out


@pytest.mark.parametrize("n", [160, 401, 1999, 4800])
def test_matches_numpy_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    got = lfbe(torch.tensor(x, dtype=torch.float32)).double().numpy()
    ref = reference_lfbe(x.astype(np.float32))
    assert got.shape == (n // 160, 40)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-4)


def test_filterbank_shape_and_peaks() -> None:
    fb = mel_filterbank()
    assert fb.shape == (257, 40)
    assert fb.min() >= 0 and fb.max() <= 1.0
    assert (fb.sum(0) > 0).all()  # no empty band at 512-point resolution


def test_sine_lands_in_its_band() -> None:
    n = 16000
    x = torch.sin(2 * torch.pi * 1000 * torch.arange(n) / 16000)
    feats = lfbe(x)
    centres = _hz(np.linspace(_mel(0.0), _mel(8000.0), 42))[1:-1]
    assert abs(centres[int(feats[50].argmax())] - 1000) < 120


def test_batch_padding_is_exact() -> None:
    """Zero padding in a batch leaves an utterance's floor(n / 160) frames bit-identical."""
    rng = np.random.default_rng(0)
    a = torch.tensor(rng.standard_normal(3333), dtype=torch.float32)
    batch = torch.zeros(2, 5000)
    batch[0, :3333] = a
    batch[1] = torch.tensor(rng.standard_normal(5000), dtype=torch.float32)
    module = LFBE()
    alone = module(a.unsqueeze(0))[0]
    assert alone.shape == (20, 40)
    assert torch.equal(module(batch)[0, :20], alone)


def test_silence_hits_the_floor_and_short_input_fails() -> None:
    assert torch.allclose(lfbe(torch.zeros(800)), torch.full((5, 40), float(np.log(1e-10))))
    with pytest.raises(ValueError, match="shorter"):
        lfbe(torch.zeros(100))
