"""The CPC encoder's block-GEMM convolution against ``torch.nn.functional.conv1d`` (values in
float64, gradients by ``gradcheck``), and the encoder's two paths against each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpc_fast.config import pretrain
from cpc_fast.models import CPCConfig, CPCModel
from cpc_fast.models.block_conv import conv_pads, two_block_conv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int):
    """The reference: (B, L, C) through Conv1d with the encoder's padding, as (B, L', out)."""
    x = F.pad(h.transpose(1, 2), conv_pads(weight.shape[2], stride))
    return F.conv1d(x, weight, bias, stride=stride).transpose(1, 2)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize("extra", [0, 1])  # frames past the last whole stride
def test_equals_conv1d(channels: int, stride: int, extra: int) -> None:
    gen = torch.Generator().manual_seed(stride * 10 + channels + extra)
    for blocks in (1, 2, 7):
        length = blocks * stride + extra
        h = torch.randn(2, length, channels, dtype=torch.float64, generator=gen)
        weight = torch.randn(4, channels, 2 * stride, dtype=torch.float64, generator=gen)
        bias = torch.randn(4, dtype=torch.float64, generator=gen)
        got = two_block_conv(h, weight, bias, stride)
        assert got.shape == (2, length // stride, 4)
        torch.testing.assert_close(got, _conv(h, weight, bias, stride), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,length", [(1, 3), (2, 5), (3, 9), (5, 11)])
def test_gradients(stride: int, length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    h = torch.randn(2, length, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(4, 3, 2 * stride, dtype=torch.float64, generator=gen)
    bias = torch.randn(4, dtype=torch.float64, generator=gen)
    weight.requires_grad_()
    bias.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: two_block_conv(*a, stride), (h, weight, bias), eps=1e-6, atol=1e-8
    )
    # And the same gradients as the convolution's (the input's last, unread frame gets 0).
    out = two_block_conv(h, weight, bias, stride)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    mine = torch.autograd.grad(out, (h, weight, bias), grad)
    theirs = torch.autograd.grad(_conv(h, weight, bias, stride), (h, weight, bias), grad)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_refuses_other_kernels() -> None:
    with pytest.raises(ValueError, match="twice the stride"):
        two_block_conv(torch.randn(1, 8, 1), torch.randn(2, 1, 3), torch.randn(2), 2)


@pytest.mark.parametrize(
    "config",
    [pretrain.tiny().model, CPCConfig(encoder_dim=16, context_dim=8, prediction_steps=2)],
    ids=["tiny-channel-norm", "small-no-norm"],
)
@pytest.mark.parametrize("samples", [160, 161, 1599, 4321])
def test_encoder_paths_agree(config: CPCConfig, samples: int) -> None:
    torch.manual_seed(samples)
    encoder = CPCModel(config).double().encoder
    assert encoder.blocks  # every kernel spans two strides
    wave = torch.randn(3, samples, dtype=torch.float64, requires_grad=True)
    params = [wave, *encoder.parameters()]
    z_blocks = encoder(wave)
    grad = torch.randn_like(z_blocks)
    g_blocks = torch.autograd.grad(z_blocks, params, grad)
    encoder.blocks = False  # the Conv1d path, as on CUDA
    z_conv = encoder(wave)
    g_conv = torch.autograd.grad(z_conv, params, grad)
    assert z_blocks.shape == z_conv.shape == (3, samples // 160, config.encoder_dim)
    torch.testing.assert_close(z_blocks, z_conv, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_blocks, g_conv, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_other_kernels_use_conv1d() -> None:
    config = CPCConfig(encoder_dim=8, context_dim=8, strides=(5, 4), kernel_sizes=(10, 6))
    encoder = CPCModel(config).encoder
    assert not encoder.blocks
    assert encoder(torch.randn(2, 400)).shape == (2, 20, 8)


def test_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    encoder = CPCModel(pretrain.tiny().model).encoder
    wave = torch.randn(2, 1600)
    reference = encoder(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder(wave)
        z.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in encoder.parameters())
    torch.testing.assert_close(z.float(), reference, rtol=0.1, atol=0.1)
