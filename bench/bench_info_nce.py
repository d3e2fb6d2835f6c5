"""Benchmark: CPC InfoNCE at the paper's shape (B=8, L=1000, D=128, K=12, N=50).

Providers
  reference  the naive dense gather a user would write (cpc_info_nce_naive), eager
  compiled   torch.compile of that naive function
  chunked    the library's reference backend (one step k at a time, scores via matmul)
  fused-*    the Triton kernels: philox (default: in-kernel sampling), gather (explicit
             indices), *-det (deterministic d_z: sorted segments instead of atomics),
             dense (tensor-core tiles weighted by draw counts)

GPU (skipped without CUDA): fp32 and bf16, ``fwd`` and ``fwd+bwd``, each call synchronised;
``extra_info.peak_extra_MB`` is torch.cuda.max_memory_allocated above what was allocated
before the call (inputs and indices excluded).
CPU: the reference backend (chunked) against the naive gather, fp32 fwd+bwd; its
``peak_extra_MB`` is the growth of the peak resident set size (VmHWM) of a fresh
subprocess over its value just before one call, i.e. the call's peak extra memory.

    pytest bench/bench_info_nce.py --benchmark-json=bench/results/info_nce-cpu.json
    python bench/report.py bench/results/info_nce-cpu.json

``BENCH_DEADLINE`` (Unix time, set by bench/gpu_check.sh) skips the benchmarks that would
start after it: a benchmark interrupted inside its timed rounds has no data, and
pytest-benchmark then fails to write the JSON of every benchmark that did finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from _rss import peak_rss_kib

from cpc_fast.losses.info_nce import cpc_info_nce
from cpc_fast.losses.info_nce_reference import cpc_info_nce_naive

B, K, L, D, N = 8, 12, 1000, 128, 50
HAS_CUDA = torch.cuda.is_available()
FUSED = {
    "fused-philox": {"design": "philox"},
    "fused-philox-det": {"design": "philox", "deterministic": True},
    "fused-gather": {"design": "gather"},
    "fused-gather-det": {"design": "gather", "deterministic": True},
    "fused-dense": {"design": "dense"},
}
_compiled = {}


def _inputs(device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    # The model hands over predictions as a permuted view of a (B, L, K, D) buffer.
    pred = torch.randn(B, L, K, D, device=device, generator=g).permute(0, 2, 1, 3) * 0.1
    z = torch.randn(B, L, D, device=device, generator=g)
    neg = torch.randint(0, L, (B, K, L, N), device=device, generator=g)
    return pred.to(dtype).requires_grad_(), z.to(dtype).requires_grad_(), neg


@pytest.fixture(autouse=True)
def _within_deadline():
    deadline = os.environ.get("BENCH_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("the time budget of bench/gpu_check.sh is spent")


def _loss_fn(provider: str):
    if provider == "reference":
        return lambda p, z, neg: cpc_info_nce_naive(p, z, neg)
    if provider == "compiled":
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(cpc_info_nce_naive, dynamic=False)
        return lambda p, z, neg: _compiled["fn"](p, z, neg)
    if provider == "chunked":
        return lambda p, z, neg: cpc_info_nce(p, z, neg_index=neg, backend="reference").loss
    kwargs = FUSED[provider]
    if kwargs["design"] in ("philox", "dense"):
        return lambda p, z, neg: cpc_info_nce(p, z, N, seed=1, backend="fused", **kwargs).loss
    return lambda p, z, neg: cpc_info_nce(p, z, neg_index=neg, backend="fused", **kwargs).loss


def _step(fn, pred, z, neg, mode: str):
    if mode == "fwd":
        with torch.no_grad():
            return fn(pred, z, neg)
    loss = fn(pred, z, neg)
    loss.backward()
    pred.grad = z.grad = None
    return loss


@pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark")
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("provider", ["reference", "compiled", "chunked", *FUSED])
def test_info_nce_gpu(benchmark, provider, dtype, mode):
    pred, z, neg = _inputs("cuda", dtype)
    fn = _loss_fn(provider)

    def run():
        out = _step(fn, pred, z, neg, mode)
        torch.cuda.synchronize()
        return out

    run()  # compile / autotune / warm the allocator outside the timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    peak = torch.cuda.max_memory_allocated() - before
    benchmark.extra_info.update(
        {
            "peak_extra_MB": round(peak / 2**20, 1),
            "shape": [B, K, L, D, N],
            "dtype": str(dtype).removeprefix("torch."),
            "mode": mode,
            "provider": provider,
        }
    )
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.skipif(HAS_CUDA, reason="CPU benchmark (the GPU run measures the GPU)")
@pytest.mark.parametrize("provider", ["chunked", "reference"])
def test_info_nce_cpu(benchmark, provider):
    pred, z, neg = _inputs("cpu", torch.float32)
    fn = _loss_fn(provider)
    benchmark.extra_info.update(
        {
            "peak_extra_MB": _cpu_peak_extra_mb(provider),
            "shape": [B, K, L, D, N],
            "dtype": "float32",
            "mode": "fwd+bwd",
            "provider": provider,
            "threads": torch.get_num_threads(),
        }
    )
    benchmark.pedantic(
        lambda: _step(fn, pred, z, neg, "fwd+bwd"), rounds=3, iterations=1, warmup_rounds=1
    )


def _cpu_peak_extra_mb(provider: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--cpu-peak", provider],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_MB"]


def _measure_cpu_peak(provider: str) -> None:
    pred, z, neg = _inputs("cpu", torch.float32)
    fn = _loss_fn(provider)
    before = peak_rss_kib()
    _step(fn, pred, z, neg, "fwd+bwd")
    after = peak_rss_kib()
    print(json.dumps({"provider": provider, "peak_extra_MB": round((after - before) / 1024, 1)}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cpu-peak":
        _measure_cpu_peak(sys.argv[2])
    else:
        raise SystemExit("usage: python bench/bench_info_nce.py --cpu-peak PROVIDER")
