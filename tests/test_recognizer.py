"""The attention recognizer: sizes as in the paper, padding never leaks, an independent
re-computation of the forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig, masked_mean_std


@pytest.mark.parametrize("input_dim", [256, 40])
def test_paper_sizes(input_dim: int) -> None:
    model = EmotionRecognizer(RecognizerConfig(input_dim=input_dim))
    att = model.attention
    assert att.num_heads == 8 and att.head_dim == 64
    assert att.qkv.weight.shape == (3 * 512, input_dim)  # Q, K, V: D_in -> 512 each
    assert att.out.weight.shape == (input_dim, 512)  # W_O back to D_in
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(128, 2 * input_dim), (128, 128)]
    assert [m.p for m in model.head if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    assert model.output.weight.shape == (3, 128)
    out = model(torch.randn(2, 7, input_dim), torch.tensor([7, 3]))
    assert out.shape == (2, 3)


def test_masking_invariance() -> None:
    """The same utterance alone and padded in a batch gives the same output (eval mode)."""
    torch.manual_seed(0)
    model = EmotionRecognizer(RecognizerConfig(input_dim=40)).eval()
    utt = torch.randn(1, 23, 40)
    alone = model(utt, torch.tensor([23]))
    batch = torch.randn(3, 61, 40) * 5  # other utterances and garbage in the padding
    batch[1, :23] = utt[0]
    out = model(batch, torch.tensor([61, 23, 40]))
    torch.testing.assert_close(out[1], alone[0], rtol=1e-5, atol=1e-6)
    emb_alone = model.embed(utt, torch.tensor([23]))
    torch.testing.assert_close(
        model.embed(batch, torch.tensor([61, 23, 40]))[1], emb_alone[0], rtol=1e-5, atol=1e-6
    )


def _independent_forward(model: EmotionRecognizer, x: torch.Tensor) -> torch.Tensor:
    """One unpadded utterance (L, D), written out head by head in float64."""
    x = x.double()
    x = (x - model.input_mean.double()) / model.input_std.double()
    W = model.attention.qkv.weight.double()
    b = model.attention.qkv.bias.double()
    q_all, k_all, v_all = (x @ W.T + b).split(512, dim=1)
    heads = []
    for h in range(8):
        sl = slice(64 * h, 64 * (h + 1))
        scores = q_all[:, sl] @ k_all[:, sl].T / math.sqrt(64)
        heads.append(torch.softmax(scores, dim=1) @ v_all[:, sl])
    U = (
        torch.cat(heads, 1) @ model.attention.out.weight.double().T
        + model.attention.out.bias.double()
    )
    u = torch.cat([U.mean(0), torch.sqrt(U.var(0, unbiased=False) + 1e-5)])
    lin1, lin2 = (m for m in model.head if isinstance(m, torch.nn.Linear))
    h1 = torch.relu(u @ lin1.weight.double().T + lin1.bias.double())
    h2 = torch.relu(h1 @ lin2.weight.double().T + lin2.bias.double())
    return h2 @ model.output.weight.double().T + model.output.bias.double()


def test_matches_independent_forward() -> None:
    torch.manual_seed(1)
    model = EmotionRecognizer(RecognizerConfig(input_dim=24)).eval()
    model.set_input_normalization(torch.randn(24), torch.rand(24) + 0.5)
    x = torch.randn(2, 15, 24)
    out = model(x, torch.tensor([15, 9]))
    torch.testing.assert_close(
        out[0].double(), _independent_forward(model, x[0]), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        out[1].double(), _independent_forward(model, x[1, :9]), rtol=1e-4, atol=1e-5
    )


def test_masked_statistics_and_single_frame() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mean, std = masked_mean_std(x, torch.tensor([[True, True, False]]), eps=0.0)
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(1.0)  # population
    model = EmotionRecognizer(RecognizerConfig(input_dim=8))
    out = model(torch.randn(1, 1, 8), torch.tensor([1]))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_inputs() -> None:
    model = EmotionRecognizer(RecognizerConfig(input_dim=8))
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(2, 5, 9), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="frame lengths"):
        model(torch.randn(2, 5, 8), torch.tensor([6, 5]))
    with pytest.raises(ValueError, match="frame lengths"):
        model(torch.randn(2, 5, 8), torch.tensor([0, 5]))
