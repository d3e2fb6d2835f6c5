"""Benchmark: one CPC pre-training step at the paper's shape, and the data pipeline feeding it.

Step (``train_step``: forward, InfoNCE, backward, Adam) on B=8 windows of 10 s (160000
samples -> L=1000 frames, K=12, N=50, the paper's CPCConfig), with the loss on the
``reference`` backend or the ``fused`` Triton kernels (CUDA only). GPU: bf16 autocast (the
default there) and fp32; CPU: fp32. ``extra_info``:

  audio_s_per_s    80 s of audio / median step time: the throughput of one process
  loss_fraction    median time of the loss alone (forward + backward on the step's own
                   predictions and z, same dtype and layout) / median step time
  peak_MB          CUDA: torch.cuda.max_memory_allocated during one step (weights, Adam state,
                   activations, the batch). CPU: growth of the peak resident set size
                   (VmHWM) of a fresh subprocess over its first step (model and batch
                   already allocated), i.e. the step's peak extra memory.

Data pipeline (CPU, always): one DataLoader worker's work for one batch of 8 windows:
read 12-s FLAC files (``flac``) or synthesise them (``synthetic``), cut to 10 s, batch.
``audio_s_per_s_per_worker`` says how many workers a GPU needs (target / this).

    pytest bench/bench_train_step.py --benchmark-json=bench/results/train-step-cpu.json

What could stop the H100 target (>= 2000 s of audio/s per GPU, i.e. 25 steps/s, 40 ms per
step): (1) the GRU is sequential over 1000 frames; cuDNN's fused GRU keeps it to one kernel
per direction of the pass, but each of the 1000 steps is a small (8 x 768) GEMM, so the GRU
is latency-bound (it runs in fp32 on purpose: bf16 would not speed it up); (2) the data: 25
batches/s are 200 FLAC decodes of 10 s per second, several DataLoader workers per GPU (see
``audio_s_per_s_per_worker``); (3) the loss at K=12, N=50 scores 8*12*1000*51 candidates of
128 dims: the fused kernels keep it under 10 % of the step, the reference one does not.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _rss import peak_rss_kib

from cpc_fast.config.pretrain import paper
from cpc_fast.losses.info_nce import BACKEND_ENV, cpc_info_nce
from cpc_fast.models import CPCModel
from cpc_fast.training.step import make_optimizer, train_step

B, SECONDS, SAMPLE_RATE = 8, 10.0, 16000
AUDIO_PER_STEP = B * SECONDS
HAS_CUDA = torch.cuda.is_available()


def _setup(device: str):
    config = paper()
    torch.manual_seed(0)
    model = CPCModel(config.model).to(device)
    optimizer = make_optimizer(model, config)
    wave = torch.randn(B, int(SECONDS * SAMPLE_RATE), device=device) * 0.05
    return config, model, optimizer, wave


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, device: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loss_seconds(model, wave, config, amp_dtype, device: str, rounds: int) -> float:
    """Forward + backward of the loss alone on this step's predictions and z."""
    amp = torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.no_grad(), amp:
        out = model(wave)
    pred = out.predictions.detach().requires_grad_()  # keeps the permuted layout
    z = out.z.detach().requires_grad_()

    def loss_step() -> None:
        cpc_info_nce(pred, z, num_negatives=config.model.num_negatives, seed=1).loss.backward()

    loss_step()
    return _median_seconds(loss_step, device, rounds)


def _bench_step(benchmark, device: str, amp_dtype, provider: str, rounds: int) -> None:
    config, model, optimizer, wave = _setup(device)

    def step() -> None:
        train_step(model, optimizer, wave, config.model, seed=0, amp_dtype=amp_dtype)
        _sync(device)

    for _ in range(2):  # cudnn.benchmark autotuning, Triton compilation, allocator warm-up
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _cpu_peak_mb()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    step_s = benchmark.stats.stats.median
    loss_s = _loss_seconds(model, wave, config, amp_dtype, device, rounds)
    benchmark.extra_info.update(
        {
            "provider": provider,
            "precision": "fp32" if amp_dtype is None else "bf16-autocast",
            "shape": f"B={B} T={int(SECONDS * SAMPLE_RATE)} L=1000 K=12 N=50",
            "audio_s_per_s": round(AUDIO_PER_STEP / step_s, 1),
            "loss_fraction": round(loss_s / step_s, 3),
            "peak_MB": round(peak_mb, 1),
            "threads": torch.get_num_threads(),
        }
    )


@pytest.mark.skipif(not HAS_CUDA, reason="GPU benchmark")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_train_step_gpu(benchmark, monkeypatch, provider, precision):
    monkeypatch.setenv(BACKEND_ENV, provider)
    torch.backends.cudnn.benchmark = True
    amp = torch.bfloat16 if precision == "bf16" else None
    _bench_step(benchmark, "cuda", amp, provider, rounds=15)


@pytest.mark.skipif(HAS_CUDA, reason="CPU benchmark (the GPU run measures the GPU)")
def test_train_step_cpu(benchmark, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "reference")
    _bench_step(benchmark, "cpu", None, "reference", rounds=3)


def _cpu_peak_mb() -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--cpu-peak"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", BACKEND_ENV: "reference"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_MB"]


def _measure_cpu_peak() -> None:
    config, model, optimizer, wave = _setup("cpu")
    # The peak only grows, so the first step is the one measured (it also creates Adam's
    # two moment buffers, 8 MB for the paper's model).
    before = peak_rss_kib()
    train_step(model, optimizer, wave, config.model, seed=1)
    print(json.dumps({"peak_MB": (peak_rss_kib() - before) / 1024}))


@pytest.fixture(scope="module")
def flac_files(tmp_path_factory) -> list[str]:
    # soundfile only here: the GPU images lack it, and the step benchmarks must still run.
    sf = pytest.importorskip("soundfile")

    from cpc_fast.data.speech_synth import synthesize, voice_for_speaker

    folder = tmp_path_factory.mktemp("flac")
    paths = []
    for i in range(B):
        wave = synthesize(12.0, voice_for_speaker(str(i)), rng=np.random.default_rng(i))
        path = folder / f"{i}.flac"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("source", ["flac", "synthetic"])
def test_data_pipeline_cpu(benchmark, flac_files, source):
    from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
    from cpc_fast.data.file_index import AudioFileDataset, AudioItem
    from cpc_fast.data.windows import WindowCollate, WindowDataset

    window = int(SECONDS * SAMPLE_RATE)
    if source == "flac":
        items = [AudioItem(p, str(i), None, 12 * SAMPLE_RATE) for i, p in enumerate(flac_files)]
        dataset = AudioFileDataset(items)
    else:
        dataset = SyntheticSpeechCorpus(B, 1, seconds=(12.0, 12.0))
    windows = WindowDataset(dataset, window, crop="random")
    collate = WindowCollate(window)

    def batch():
        return collate([windows[i] for i in range(B)])

    assert batch()["wave"].shape == (B, window)
    benchmark.pedantic(batch, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        {
            "source": source,
            "audio_s_per_s_per_worker": round(AUDIO_PER_STEP / benchmark.stats.stats.median, 1),
        }
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--cpu-peak"]:
        _measure_cpu_peak()
    else:
        raise SystemExit("usage: python bench/bench_train_step.py --cpu-peak")
