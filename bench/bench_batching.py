"""Benchmark: CPC batch construction, (B, 160000) float32 from B utterances of 2-20 s.

Providers (all produce the same bits, checked before timing):
  cpp     cpc_fast.data.batching.repeat_pad on the C++ extension
  numpy   the same call on the NumPy fallback (CPC_FAST_DISABLE_CPP=1)
  torch   the per-utterance crop / repeat + torch.stack collate one writes by hand
  copyto  np.copyto of a (B, 160000) float32 array: the memory-bandwidth yardstick

``output=new`` allocates the batch on every call (what a collate function does);
``output=out`` writes into a preallocated buffer (``out=``; ``torch.stack(..., out=)``).
One group per (B, input dtype, output); the baseline is ``torch``; ``GB/s`` is output bytes /
median time; ``copyto`` (in the ``out`` groups) is the memory-bandwidth yardstick.

    pytest --benchmark -k repeat_pad
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _harness import Case, measure, show

from cpc_fast.data import _batching_numpy, batching

LENGTH = 160_000  # 10 s at 16 kHz, the paper's training window
SAMPLE_RATE = 16_000


@pytest.fixture
def torch_threads():
    """torch.set_num_threads for one test; the session's setting comes back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _utterances(batch: int, dtype: np.dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    seconds = rng.uniform(2.0, 20.0, size=batch)
    waves = []
    for s in seconds:
        x = rng.standard_normal(int(s * SAMPLE_RATE)) * 0.1
        waves.append((x * 32767).astype(np.int16) if dtype == np.int16 else x.astype(np.float32))
    return waves


def _offsets(waves: list[np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.array([rng.integers(0, max(w.shape[0] - LENGTH, 0) + 1) for w in waves])


def _torch_collate(waves: list[torch.Tensor], offsets: list[int], out=None) -> torch.Tensor:
    rows = []
    for w, off in zip(waves, offsets, strict=True):
        n = w.shape[0]
        if n >= LENGTH:
            row = w[off : off + LENGTH]
            rows.append(row.float() / 32768 if row.dtype == torch.int16 else row)
        else:
            x = w.float() / 32768 if w.dtype == torch.int16 else w
            rows.append(x.repeat(-(-LENGTH // n))[:LENGTH])
    return torch.stack(rows) if out is None else torch.stack(rows, out=out)


def _runner(provider: str, waves: list[np.ndarray], offsets: np.ndarray, output: str):
    buffer = np.empty((len(waves), LENGTH), np.float32) if output == "out" else None
    if provider == "torch":
        tensors = [torch.from_numpy(w) for w in waves]
        offs = offsets.tolist()
        out = None if buffer is None else torch.from_numpy(buffer)
        return lambda: _torch_collate(tensors, offs, out)
    return lambda: batching.repeat_pad(waves, LENGTH, offsets, out=buffer)


CASES = [
    (batch, dtype, output, provider)
    for batch in (8, 64)
    for dtype in ("float32", "int16")
    for output in ("new", "out")
    for provider in ("torch", "numpy", "cpp", *(("copyto",) if output == "out" else ()))
]


@pytest.mark.parametrize(
    ("batch", "dtype", "output", "provider"), CASES, ids=["-".join(map(str, c)) for c in CASES]
)
def test_repeat_pad(benchmark, monkeypatch, torch_threads, batch, dtype, output, provider):
    case = Case(
        f"batching B={batch} {dtype} output={output}",
        provider,
        "torch",
        f"({batch}, {LENGTH}) float32 from utterances of 2-20 s",
        device="cpu",
    )
    nbytes = batch * LENGTH * 4
    if provider == "copyto":
        src = np.random.default_rng(0).standard_normal((batch, LENGTH)).astype(np.float32)
        dst = np.empty_like(src)
        median = measure(benchmark, case, lambda: np.copyto(dst, src))
        if median is not None:
            show(benchmark, **{"GB/s": f"{nbytes / median / 1e9:.1f}"})
        return
    if provider == "cpp" and not batching.extension_available():
        pytest.fail(f"the C++ extension is not built: {batching.backend_reason()}")
    if provider == "numpy":
        monkeypatch.setenv(batching.DISABLE_ENV, "1")
    if provider == "torch":
        # torch's intra-op threads busy-wait for each other; on a shared 2-core machine that
        # makes the hand-written collate erratic: one thread, as in a DataLoader worker.
        torch_threads(1)
    waves = _utterances(batch, np.dtype(dtype))
    offsets = _offsets(waves)
    run = _runner(provider, waves, offsets, output)

    expected = _batching_numpy.repeat_pad(waves, LENGTH, offsets)
    got = run()
    np.testing.assert_array_equal(got.numpy() if provider == "torch" else got, expected)

    median = measure(benchmark, case, run)
    if median is not None:
        show(benchmark, **{"GB/s": f"{nbytes / median / 1e9:.1f}"})
