"""Benchmark: one CPC pre-training step at the paper's shape, and the data pipeline feeding it.

Step (``train_step``: forward, InfoNCE, backward, Adam) on B=8 windows of 10 s (160000
samples -> L=1000 frames, K=12, N=50, the paper's CPCConfig), with the loss on the
``reference`` backend (the baseline) or the ``fused`` Triton kernels (CUDA only), and
``fused-compile``: the fused step as ``cpc-fast pretrain --compile`` runs it (model and loss
under ``torch.compile`` with CUDA graphs; its compile and graph capture happen in three
warm-up steps before the timing). GPU: bf16 autocast (the default there) and fp32; CPU:
fp32. Columns:

  audio s/s     80 s of audio / median step time: the throughput of one process
  loss share    median time of the loss alone (forward + backward on the step's own
                predictions and z, same dtype and layout) / median step time
  peak extra    the step's peak memory above what the model, Adam's state and the batch
                already hold (bench/_harness.py says how it is measured)

Data pipeline (CPU work, on any machine): one DataLoader worker's work for one batch of 8
windows: read 12-s FLAC files (``flac``, needs soundfile), read them from the prepared
corpus (``cached``: memory-mapped int16 shards, decoded once by
:mod:`cpc_fast.data.prepared`) or synthesise them (``synthetic``, memoised after the
warm-up), cut to 10 s, batch. ``audio s/s`` per worker says how many workers a GPU needs
(its step throughput / this).

Preparing the corpus (``test_prepare_corpus``): decoding 8 files of 12 s into a fresh cache
in this process, from 16-bit FLAC at 16 kHz (``flac``) or from a 44.1 kHz stereo MP3
(``mp3-44k``: decoded, averaged, resampled); ``audio s/s per core``.

    pytest --benchmark -k train_step

What could stop the GPU target (>= 2000 s of audio/s per GPU, i.e. 25 steps/s, 40 ms per
step): (1) the GRU is sequential over 1000 frames; cuDNN's fused GRU keeps it to one kernel
per direction of the pass, but each of the 1000 steps is a small (8 x 768) GEMM, so the GRU
is latency-bound (it runs in fp32 on purpose: bf16 would not speed it up); (2) the data: 25
batches/s are 200 FLAC decodes of 10 s per second, several DataLoader workers per GPU (see
``audio s/s per worker``); (3) the loss at K=12, N=50 scores 8*12*1000*51 candidates of
128 dims: the fused kernels are meant to keep it under 10 % of the step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _harness import DEVICE, ON_GPU, Case, import_needing_soundfile, measure, median_seconds, show

from cpc_fast.losses.info_nce import BACKEND_ENV, cpc_info_nce
from cpc_fast.models import CPCModel

B, SECONDS, SAMPLE_RATE = 8, 10.0, 16000
AUDIO_PER_STEP = B * SECONDS
STEP_SHAPE = f"B={B} T={int(SECONDS * SAMPLE_RATE)} L=1000 K=12 N=50 D=128"
PRECISIONS = {"bf16-autocast": torch.bfloat16, "fp32": None} if ON_GPU else {"fp32": None}


def _setup(pretrain, step):
    config = pretrain.paper()
    torch.manual_seed(0)
    model = CPCModel(config.model).to(DEVICE)
    optimizer = step.make_optimizer(model, config)
    wave = torch.randn(B, int(SECONDS * SAMPLE_RATE), device=DEVICE) * 0.05
    return config, model, optimizer, wave


def _loss_seconds(model, wave, config, amp_dtype, rounds: int) -> float:
    """Forward + backward of the loss alone on this step's predictions and z."""
    amp = torch.autocast(device_type=DEVICE, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.no_grad(), amp:
        out = model(wave)
    pred = out.predictions.detach().requires_grad_()  # keeps the permuted layout
    z = out.z.detach().requires_grad_()

    def loss_step() -> None:
        cpc_info_nce(pred, z, num_negatives=config.loss.num_negatives, seed=1).loss.backward()

    return median_seconds(loss_step, rounds)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("provider", ["fused", "fused-compile", "reference"])
def test_train_step(benchmark, monkeypatch, provider, precision):
    compiled = provider == "fused-compile"
    # torch.compile of the whole model takes about a minute: start it only with that left.
    case = Case(f"CPC pre-training step {precision}", provider, "reference", STEP_SHAPE,
                needs_s=90.0 if compiled else 20.0)  # fmt: skip
    if provider != "reference":
        case.skip_unless_fused()
    pretrain, training = import_needing_soundfile(
        case, "cpc_fast.config.pretrain", "cpc_fast.training.step"
    )
    monkeypatch.setenv(BACKEND_ENV, "fused" if compiled else provider)
    torch.backends.cudnn.benchmark = True
    amp_dtype = PRECISIONS[precision]
    config, model, optimizer, wave = _setup(pretrain, training)
    forward_loss = training.compile_forward_loss(wave.device) if compiled else None
    # measure's untimed first call does three steps compiled: the compile, then the CUDA
    # graphs' warm-up and capture (after measure's deadline check, not before it).
    pending = [3 if compiled else 1]

    def step() -> None:
        for _ in range(pending[0]):
            training.train_step(model, optimizer, wave, config.loss, seed=0,
                                amp_dtype=amp_dtype, compiled=forward_loss)  # fmt: skip
        pending[0] = 1

    # measure's warm-up step runs cudnn.benchmark's autotuning, Triton's compilation and
    # creates Adam's state, so the peak of the next step is the steady state's.
    median = measure(benchmark, case, step)
    if median is None:
        return
    loss_s = _loss_seconds(model, wave, config, amp_dtype, rounds=benchmark.stats.stats.rounds)
    show(
        benchmark,
        **{"audio s/s": f"{AUDIO_PER_STEP / median:,.1f}", "loss share": f"{loss_s / median:.0%}"},
    )


def _flac_files(folder, synth) -> list[str]:
    """8 FLAC files of 12 s of synthetic speech in ``folder``."""
    import soundfile as sf  # import_needing_soundfile has found it

    paths = []
    for i in range(B):
        voice = synth.voice_for_speaker(str(i))
        wave = synth.synthesize(12.0, voice, rng=np.random.default_rng(i))
        path = folder / f"{i}.flac"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("source", ["flac", "cached", "synthetic"])
def test_data_pipeline(benchmark, tmp_path, source):
    case = Case(
        "data: one worker batches 8 windows of 10 s from 12-s utterances",
        source,
        "flac",
        f"B={B} T={int(SECONDS * SAMPLE_RATE)}",
        device="cpu",
    )
    file_index, synth, corpus, windowing, prepared = import_needing_soundfile(
        case,
        "cpc_fast.data.file_index",
        "cpc_fast.data.speech_synth",
        "cpc_fast.data.corpora.synthetic_speech",
        "cpc_fast.data.windows",
        "cpc_fast.data.prepared",
    )
    window = int(SECONDS * SAMPLE_RATE)
    if source in ("flac", "cached"):
        items = [
            file_index.AudioItem(p, str(i), None, 12 * SAMPLE_RATE)
            for i, p in enumerate(_flac_files(tmp_path, synth))
        ]
        dataset = file_index.AudioFileDataset(items)
        if source == "cached":
            dataset = prepared.prepare_corpus(dataset, tmp_path / "cache", progress=False)
    else:
        dataset = corpus.SyntheticSpeechCorpus(B, 1, seconds=(12.0, 12.0))
    windows = windowing.WindowDataset(dataset, window, crop="random")
    collate = windowing.WindowCollate(window)

    def batch():
        return collate([windows[i] for i in range(B)])

    assert batch()["wave"].shape == (B, window)
    median = measure(benchmark, case, batch)
    if median is not None:
        show(benchmark, **{"audio s/s per worker": f"{AUDIO_PER_STEP / median:,.0f}"})


def _source_files(folder, synth, source: str) -> list[str]:
    """8 files of 12 s of synthetic speech: 16-bit FLAC at 16 kHz, or 44.1 kHz stereo MP3."""
    if source == "flac":
        return _flac_files(folder, synth)
    import soundfile as sf  # import_needing_soundfile has found it

    paths = []
    for i in range(B):
        voice = synth.voice_for_speaker(str(i))
        wave = synth.synthesize(12.0, voice, rng=np.random.default_rng(i), sample_rate=44100)
        path = folder / f"{i}.mp3"
        sf.write(path, np.stack([wave, 0.8 * wave], axis=1), 44100, format="MP3")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("source", ["flac", "mp3-44k"])
def test_prepare_corpus(benchmark, tmp_path, source):
    case = Case(
        "data: preparing the cache from 8 files of 12 s, one process",
        source,
        "flac",
        "8 x 12 s -> 16 kHz mono",
        device="cpu",
    )
    file_index, synth, prepared = import_needing_soundfile(
        case, "cpc_fast.data.file_index", "cpc_fast.data.speech_synth", "cpc_fast.data.prepared"
    )
    items = [
        file_index.AudioItem(p, str(i), None, 12 * SAMPLE_RATE)
        for i, p in enumerate(_source_files(tmp_path, synth, source))
    ]
    dataset = file_index.AudioFileDataset(items)
    rounds = iter(range(10**6))

    def fresh_root():
        return (tmp_path / f"cache{next(rounds)}",)  # nothing to reuse: every round decodes

    def prepare(root):
        return prepared.prepare_corpus(dataset, root, progress=False)

    def check(corpus):
        assert corpus.decoded == B and corpus[0].shape == (12 * SAMPLE_RATE,)

    median = measure(benchmark, case, prepare, setup=fresh_root, check=check)
    if median is not None:
        show(benchmark, **{"audio s/s per core": f"{B * 12.0 / median:,.0f}"})
