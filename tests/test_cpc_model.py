"""The CPC network: the paper's sizes, frame counts, causality, predictors, saving/loading,
and that a tiny model can fit one batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cpc_fast import load_cpc
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import save_weights
from cpc_fast.losses.config import LossConfig
from cpc_fast.losses.info_nce import cpc_info_nce, sample_negatives
from cpc_fast.models import CPCConfig, CPCModel
from cpc_fast.models.cpc import ChannelNorm
from cpc_fast.models.loading import save_cpc

SMALL = CPCConfig(encoder_dim=16, context_dim=24, prediction_steps=4)
SMALL_LOSS = LossConfig(num_negatives=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_architecture() -> None:
    model = CPCModel()
    convs = list(model.encoder.convs)
    assert [c.stride[0] for c in convs] == [5, 4, 4, 2]
    assert [c.kernel_size[0] for c in convs] == [10, 8, 8, 4]
    assert [c.out_channels for c in convs] == [128] * 4
    assert convs[0].in_channels == 1
    gru = model.gru
    assert (gru.input_size, gru.hidden_size, gru.num_layers, gru.bidirectional) == (
        128,
        256,
        1,
        False,
    )
    assert model.predictor.weight.shape == (12 * 128, 256)  # 12 maps 256 -> 128
    assert model.predictor.bias is None
    assert LossConfig().num_negatives == 50 and model.frame_hop == 160


@pytest.mark.parametrize("T", [160, 161, 319, 320, 1000, 1599, 1600, 4321, 16000])
def test_frame_counts_and_shapes(T: int) -> None:
    model = CPCModel(SMALL).eval()
    wave = torch.randn(3, T)
    with torch.no_grad():
        out = model(wave)
        L = T // 160
        assert out.z.shape == (3, L, 16)
        assert out.c.shape == (3, L, 24)
        assert out.predictions.shape == (3, 4, L, 16)
        assert model.encode(wave).shape == (3, L, 16)
        assert model.context(wave).shape == (3, L, 24)
        assert model.num_frames(T) == L


def test_frame_count_for_paper_window() -> None:
    with torch.no_grad():
        z = CPCModel().encode(torch.randn(1, 160000))
    assert z.shape == (1, 1000, 128)


def test_context_is_causal_in_frames() -> None:
    model = CPCModel(SMALL).eval()
    z = torch.randn(2, 30, 16)
    changed = z.clone()
    changed[:, 12:] += torch.randn(2, 18, 16)
    with torch.no_grad():
        a, b = model.autoregress(z), model.autoregress(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_encoder_frame_sees_only_its_neighbourhood() -> None:
    # Frame t covers samples around [160 t, 160 (t + 1)); the receptive field is finite, so
    # changing samples far after frame t must leave it untouched.
    model = CPCModel(SMALL).eval()
    wave = torch.randn(1, 3200)
    changed = wave.clone()
    changed[:, 1600:] = torch.randn(1, 1600)
    with torch.no_grad():
        a, b = model.encode(wave), model.encode(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)


def test_predictions_are_linear_maps_of_context() -> None:
    model = CPCModel(SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1600))
        weight = model.predictor.weight.view(4, 16, 24)  # (K, D, C)
        expected = torch.einsum("kdc,blc->bkld", weight, out.c)
    torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-6)


def test_channel_norm_normalises_each_frame_over_channels() -> None:
    norm = ChannelNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    x = torch.randn(2, 6, 9, dtype=torch.float64) * 3 + 5
    x64 = x.numpy()
    mean = x64.mean(axis=1, keepdims=True)
    var = x64.var(axis=1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * np.linspace(0.5, 2.0, 6)[None, :, None]
    expected += np.linspace(-1.0, 1.0, 6)[None, :, None]
    torch.testing.assert_close(norm(x), torch.from_numpy(expected), rtol=1e-10, atol=1e-10)
    # Per frame: a frame's output ignores every other frame (unlike a norm over time).
    y = x.clone()
    y[:, :, 4:] *= 10
    torch.testing.assert_close(norm(y)[:, :, :4], norm(x)[:, :, :4], rtol=0, atol=0)


def test_channel_norm_option() -> None:
    config = CPCConfig(encoder_dim=16, context_dim=16, encoder_norm="channel")
    model = CPCModel(config).eval()
    assert sum(isinstance(m, ChannelNorm) for m in model.modules()) == 4
    assert not any(isinstance(m, ChannelNorm) for m in CPCModel(SMALL).modules())
    with torch.no_grad():
        z = model.encode(torch.randn(2, 3200) * 1e-3)
    assert z.shape == (2, 20, 16) and torch.isfinite(z).all()
    assert z.abs().mean() > 0.05  # normalised: tiny inputs still give O(1) features
    with pytest.raises(UserInputError, match="encoder_norm"):
        CPCConfig(encoder_norm="time")
    # The option's old spelling (a norm over time) is refused, not silently reinterpreted.
    with pytest.raises(UserInputError, match="channel_norm"):
        CPCConfig.from_dict({**config.to_dict(), "channel_norm": True})


def test_too_short_or_wrong_rank_input() -> None:
    model = CPCModel(SMALL)
    with pytest.raises(UserInputError, match="shorter than one frame"):
        model.encode(torch.randn(1, 159))
    with pytest.raises(UserInputError, match=r"\(B, T\)"):
        model.encode(torch.randn(160))


def test_config_validation_and_round_trip() -> None:
    cfg = CPCConfig(encoder_dim=32, strides=[5, 4], kernel_sizes=[10, 8])
    assert CPCConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.frame_hop == 20
    with pytest.raises(UserInputError):
        CPCConfig(strides=(5, 4), kernel_sizes=(10,))
    with pytest.raises(UserInputError):
        CPCConfig(kernel_sizes=(4, 8, 8, 4))  # kernel < stride
    with pytest.raises(UserInputError):
        CPCConfig.from_dict({"encoder_dim": 3, "bogus": 1})


def test_save_and_load_cpc(tmp_path) -> None:
    model = CPCModel(SMALL)
    save_cpc(model, tmp_path / "model.safetensors")
    wave = torch.randn(2, 800)
    for where in (tmp_path, tmp_path / "model.safetensors", str(tmp_path)):
        loaded = load_cpc(where)
        assert not loaded.training and loaded.config == SMALL
        with torch.no_grad():
            torch.testing.assert_close(loaded.context(wave), model.eval().context(wave))


def test_load_cpc_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_cpc(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_cpc(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_weights(other, {"w": torch.zeros(2)}, {"x": 1}, kind="recognizer")
    with pytest.raises(UserInputError, match="'recognizer' model, expected 'cpc'"):
        load_cpc(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserInputError, match="not a readable safetensors"):
        load_cpc(garbage)
    wrong = tmp_path / "wrong.safetensors"
    save_weights(wrong, CPCModel(SMALL).state_dict(), CPCConfig().to_dict(), kind="cpc")
    with pytest.raises(UserInputError, match="do not match their CPC config"):
        load_cpc(wrong)


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    cfg = CPCConfig(encoder_dim=32, context_dim=32, prediction_steps=4)
    model = CPCModel(cfg)
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.standard_normal((2, 6400)).astype(np.float32))
    B, K, L, N = 2, 4, 40, 16
    # Without the positive among the negatives, a fitted model can win every row.
    neg_index = sample_negatives(
        B, K, L, N, generator=torch.Generator().manual_seed(0), exclude_positive=True
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    chance = math.log(N + 1)
    for _ in range(150):
        out = model(wave)
        loss = cpc_info_nce(out.predictions, out.z, neg_index=neg_index).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(wave)
        final = cpc_info_nce(out.predictions, out.z, neg_index=neg_index)
    assert final.loss.item() < 0.25 * chance
    assert final.accuracy_per_step.min().item() > 0.9


def test_autocast_keeps_the_recurrence_in_float32() -> None:
    # The GPU path in bf16, exercised with CPU autocast: convolutions and predictors run in
    # bf16, the GRU in float32, and a whole training step goes through.
    from cpc_fast.config.pretrain import tiny
    from cpc_fast.training.step import make_optimizer, train_step

    model = CPCModel(SMALL)
    wave = torch.randn(2, 3200)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(wave)
    assert out.z.dtype == torch.bfloat16 and out.c.dtype == torch.float32
    assert out.predictions.dtype == torch.bfloat16
    before = model.gru.weight_hh_l0.detach().clone()
    result = train_step(
        model, make_optimizer(model, tiny()), wave, SMALL_LOSS, seed=0, amp_dtype=torch.bfloat16
    )
    assert torch.isfinite(result.loss) and result.accuracy_per_step.shape == (4,)
    assert not torch.equal(model.gru.weight_hh_l0, before)
