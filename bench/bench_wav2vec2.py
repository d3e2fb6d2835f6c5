"""Benchmark: wav2vec 2.0's contrastive loss, Hugging Face's path against cpc-fast's drop-in.

Shape: a wav2vec 2.0 BASE pre-training batch, B=8 utterances of L=500 frames (10 s), half
of each utterance masked (250 frames, drawn uniformly), N=100 negatives, D=256 (the
projected codevector size).

Providers
  hf-numpy / hf   the installed ``transformers`` package's own path: its NumPy
                  ``_sample_negative_indices`` on the host (in HF's training script it runs
                  in the data collator), the indices copied to the device, then the loss as
                  ``Wav2Vec2ForPreTraining.forward`` computes it: the negatives gathered into
                  a (N + 1, B, L, D) tensor, ``compute_contrastive_logits`` (cosine / 0.1),
                  negatives equal to the positive by value set to -inf, cross-entropy summed
                  over the masked frames. The baseline.
  cpc-fast        ``cpc_fast.integrations.wav2vec2``: ``sample_negative_indices`` on the
                  device, then ``contrastive_loss`` (the fused kernels on CUDA, the reference
                  backend on a CPU).

Groups: the sampler alone, and sampler + loss forward + backward in fp32 (and bf16 on a GPU).
Before timing, both losses are computed from the same indices and must agree.

    pytest --benchmark -k wav2vec2
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, measure

B, L, D, N = 8, 500, 256, 100
MASKED = L // 2
SHAPE = f"B={B} L={L} ({MASKED} masked) N={N} D={D}"
# bf16 on the GPU only: nobody pre-trains wav2vec 2.0 in bf16 on a CPU, and the CPU suite
# must fit in 10 minutes.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16} if ON_GPU else {"fp32": torch.float32}
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}  # HF rounds its logits to bf16


def _hf(case: Case):
    """transformers' wav2vec 2.0 module, or a recorded skip without it."""
    try:
        return importlib.import_module("transformers.models.wav2vec2.modeling_wav2vec2")
    except ImportError:
        case.skip("transformers is not installed (pip install -e '.[compat]')")


def _ours(case: Case):
    """cpc_fast.integrations.wav2vec2, or a recorded skip while this checkout lacks it."""
    try:
        return importlib.import_module("cpc_fast.integrations.wav2vec2")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("cpc_fast.integrations"):
            raise
        case.skip("cpc_fast.integrations.wav2vec2 is not in this checkout")


@functools.cache
def mask() -> torch.Tensor:
    """(B, L) bool, MASKED frames of each utterance, the same in every case."""
    g = torch.Generator().manual_seed(0)
    picks = torch.rand(B, L, generator=g).argsort(1)[:, :MASKED]
    return torch.zeros(B, L, dtype=torch.bool).scatter_(1, picks, True).to(DEVICE)


@functools.cache
def states(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """projected_states, projected_quantized_states (B, L, D), leaves with gradients."""
    g = torch.Generator(device=DEVICE).manual_seed(1)
    projected = torch.randn(B, L, D, device=DEVICE, generator=g)
    quantized = torch.randn(B, L, D, device=DEVICE, generator=g)
    return projected.to(dtype).requires_grad_(), quantized.to(dtype).requires_grad_()


def hf_sampler(hf):
    mask_np = mask().cpu().numpy()

    def sample() -> torch.Tensor:
        indices = hf._sample_negative_indices((B, L), N, mask_time_indices=mask_np)
        return torch.from_numpy(indices).to(DEVICE)

    return sample


def hf_loss(hf, projected, quantized, mask_time, negative_indices, temperature=0.1):
    """The contrastive term of ``Wav2Vec2ForPreTraining.forward``, step by step."""
    batch, length, dim = quantized.shape
    negatives = quantized.reshape(-1, dim)[negative_indices.long().view(-1)]
    negatives = negatives.view(batch, length, -1, dim).permute(2, 0, 1, 3)  # (N, B, L, D)
    logits = hf.Wav2Vec2ForPreTraining.compute_contrastive_logits(
        quantized[None], negatives, projected, temperature
    )  # (N + 1, B, L)
    same_as_positive = (quantized == negatives).all(-1)
    if same_as_positive.any():
        logits[1:][same_as_positive] = float("-inf")
    logits = logits.transpose(0, 2).reshape(-1, logits.size(0))  # (L * B, N + 1)
    labels = ((1 - mask_time.long()) * -100).transpose(0, 1).flatten()  # -100: unmasked
    return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")


@pytest.mark.parametrize("provider", ["hf-numpy", "cpc-fast"])
def test_wav2vec2_negatives(benchmark, provider):
    case = Case("wav2vec 2.0 negatives sampler", provider, "hf-numpy", SHAPE)
    if provider == "hf-numpy":
        sample = hf_sampler(_hf(case))
    else:
        ours = _ours(case)

        def sample() -> torch.Tensor:
            return ours.sample_negative_indices(mask(), N)

    measure(benchmark, case, sample)


@pytest.mark.parametrize("provider", ["hf", "cpc-fast"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_wav2vec2_loss(benchmark, dtype_name, provider):
    case = Case(f"wav2vec 2.0 sampler + loss fwd+bwd {dtype_name}", provider, "hf", SHAPE)
    hf = _hf(case)
    projected, quantized = states(DTYPES[dtype_name])
    if provider == "hf":
        sample = hf_sampler(hf)

        def loss(indices):
            return hf_loss(hf, projected, quantized, mask(), indices)
    else:
        ours = _ours(case)
        _check_same_loss(hf, ours, projected, quantized, TOLERANCE[dtype_name])

        def sample():
            return ours.sample_negative_indices(mask(), N)

        def loss(indices):
            return ours.contrastive_loss(projected, quantized, mask(), indices)

    def setup() -> tuple:
        projected.grad = quantized.grad = None
        return ()

    def path() -> torch.Tensor:
        out = loss(sample())
        out.backward()
        return out.detach()

    measure(benchmark, case, path, setup)


def _check_same_loss(hf, ours, projected, quantized, rel: float) -> None:
    indices = hf_sampler(hf)()
    with torch.no_grad():
        want = hf_loss(hf, projected, quantized, mask(), indices).item()
        got = ours.contrastive_loss(projected, quantized, mask(), indices).item()
    assert abs(got - want) <= rel * abs(want), f"cpc-fast {got} vs Hugging Face {want}"
