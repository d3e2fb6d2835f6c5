"""Benchmark: CPC's InfoNCE, every implementation side by side.

One group per pass and dtype ("InfoNCE fwd+bwd bf16", ...), all at one shape: the paper's
(B=8, K=12, L=1000, D=128, N=50) on a GPU; on a CPU B=2, a quarter of the batch (the naive
gather alone takes ~6 s and 7 GB per call at B=8, too much for the CPU suite's 10 minutes).

Providers (the fused ones need a CUDA device; the tables say so on a CPU):
  torch-dense       the baseline: what a strong user writes with cuBLAS. Every frame's score
                    by one matmul in the input dtype, (B, K, L, D) x (B, D, L) -> (B, K, L, L),
                    then the N + 1 drawn scores gathered, logsumexp in fp32. fp32 runs at
                    PyTorch's default matmul precision (no TF32)
  naive             ``cpc_info_nce_naive``: the (B, K, L, N + 1, D) candidate gather, eager
  compiled          ``torch.compile`` of that naive function
  chunked           the library's reference backend (one step k at a time, scores by matmul)
  fused-philox      the Triton kernels drawing the negatives in-kernel (the default design)
  fused-gather      the Triton kernels reading the given negative indices
  fused-*-det       the same with a deterministic d_z (sorted segments instead of atomics)
  fused-dense       tensor-core tiles against all frames, weighted by draw counts

Passes: ``fwd`` is the forward with autograd recording (as in training: what the backward
needs is saved), ``bwd`` is ``loss.backward()`` alone (the forward runs untimed in the
round's setup), ``fwd+bwd`` both. Providers given the same negatives are checked against the
chunked reference before timing; the self-drawing designs (philox, dense) must be finite and
close. On a GPU the rounds rotate over three input sets, so no round reads a warm L2.

    pytest --benchmark -k info_nce
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, measure
from naive_info_nce import cpc_info_nce_naive

from cpc_fast.losses.info_nce import cpc_info_nce

B = 8 if ON_GPU else 2
K, L, D, N = 12, 1000, 128, 50
SHAPE = f"B={B} K={K} L={L} D={D} N={N}" + ("" if ON_GPU else " (the paper's B=8 on a GPU)")
SETS = 3 if ON_GPU else 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("fwd", "bwd", "fwd+bwd")
FUSED = {
    "fused-philox": {"design": "philox"},
    "fused-philox-det": {"design": "philox", "deterministic": True},
    "fused-gather": {"design": "gather"},
    "fused-gather-det": {"design": "gather", "deterministic": True},
    "fused-dense": {"design": "dense"},
}
PROVIDERS = ("torch-dense", "naive", "chunked", *FUSED, "compiled")
BASELINE = "torch-dense"
DRAWS_OWN_NEGATIVES = ("fused-philox", "fused-philox-det", "fused-dense")
CASES = [(d, p, prov) for d in DTYPES for p in PASSES for prov in PROVIDERS]


def dense_loss(pred: torch.Tensor, z: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pred (B, K, L, D), z (B, L, D), neg (B, K, L, N) -> the mean CPC loss, from one
    (B, K, L, L) score matmul in the input dtype and a gather of the N + 1 drawn scores."""
    Bn, Kn, Ln, _ = pred.shape
    scores = torch.matmul(pred, z.transpose(1, 2).unsqueeze(1))  # (B, K, L, L)
    t = torch.arange(Ln, device=z.device)
    target = t.view(1, Ln) + torch.arange(1, Kn + 1, device=z.device).view(Kn, 1)  # (K, L)
    pos = target.clamp(max=Ln - 1).view(1, Kn, Ln, 1).expand(Bn, Kn, Ln, 1)
    picked = scores.gather(3, torch.cat([pos, neg], 3)).float()  # (B, K, L, N + 1)
    rows = torch.logsumexp(picked, -1) - picked[..., 0]
    return rows[:, target < Ln].mean()


@functools.cache
def _compiled():
    return torch.compile(cpc_info_nce_naive, dynamic=False)


def loss_fn(provider: str):
    """provider -> f(pred, z, neg) returning the scalar loss."""
    if provider == "torch-dense":
        return dense_loss
    if provider == "naive":
        return cpc_info_nce_naive
    if provider == "compiled":
        return lambda p, z, neg: _compiled()(p, z, neg)
    if provider == "chunked":
        return lambda p, z, neg: cpc_info_nce(p, z, neg_index=neg, backend="reference").loss
    kwargs = FUSED[provider]
    if provider in DRAWS_OWN_NEGATIVES:
        return lambda p, z, neg: cpc_info_nce(p, z, N, seed=1, backend="fused", **kwargs).loss
    return lambda p, z, neg: cpc_info_nce(p, z, neg_index=neg, backend="fused", **kwargs).loss


@functools.cache
def input_sets(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    sets = []
    for seed in range(SETS):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        # The model hands over predictions as a permuted view of a (B, L, K, D) buffer.
        pred = torch.randn(B, L, K, D, device=DEVICE, generator=g).permute(0, 2, 1, 3) * 0.1
        z = torch.randn(B, L, D, device=DEVICE, generator=g)
        neg = torch.randint(0, L, (B, K, L, N), device=DEVICE, generator=g)
        sets.append((pred.to(dtype).requires_grad_(), z.to(dtype).requires_grad_(), neg))
    return sets


@functools.cache
def reference_loss(dtype: torch.dtype) -> float:
    pred, z, neg = input_sets(dtype)[0]
    with torch.no_grad():
        return cpc_info_nce(pred, z, neg_index=neg, backend="reference").loss.item()


def rounds_for(fn, dtype: torch.dtype, pass_: str):
    """(setup, target) for pytest-benchmark's rounds: the setup picks the next input set and
    clears the gradients (and runs the forward for ``bwd``)."""
    sets, turn = input_sets(dtype), [0]

    def setup() -> tuple:
        pred, z, neg = sets[turn[0] % len(sets)]
        turn[0] += 1
        pred.grad = z.grad = None
        return (fn(pred, z, neg),) if pass_ == "bwd" else (pred, z, neg)

    if pass_ == "fwd":
        return setup, fn
    if pass_ == "bwd":
        return setup, lambda loss: loss.backward()

    def forward_backward(pred, z, neg):
        loss = fn(pred, z, neg)
        loss.backward()
        return loss.detach()

    return setup, forward_backward


def checker(provider: str, dtype: torch.dtype, pass_: str):
    """Checks a warm-up output against the chunked reference (same negatives), or for the
    self-drawing designs that it is finite and within 5 % (other negatives, same inputs)."""
    if pass_ == "bwd":
        return None
    rel = 0.05 if provider in DRAWS_OWN_NEGATIVES else (2e-2 if dtype != torch.float32 else 1e-4)

    def check(loss: torch.Tensor) -> None:
        got, want = float(loss.detach()), reference_loss(dtype)
        assert math.isfinite(got) and abs(got - want) <= rel * abs(want), (provider, got, want)

    return check


@pytest.mark.parametrize(
    ("dtype_name", "pass_", "provider"), CASES, ids=[f"{d}-{p}-{prov}" for d, p, prov in CASES]
)
def test_info_nce(benchmark, dtype_name, pass_, provider):
    case = Case(
        f"InfoNCE {pass_} {dtype_name}",
        provider,
        BASELINE,
        SHAPE,
        needs_s=90.0 if provider == "compiled" else 20.0,
    )
    if provider.startswith("fused"):
        case.skip_unless_fused()
    dtype = DTYPES[dtype_name]
    setup, target = rounds_for(loss_fn(provider), dtype, pass_)
    measure(benchmark, case, target, setup, check=checker(provider, dtype, pass_))
