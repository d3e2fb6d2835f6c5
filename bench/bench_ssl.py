"""Benchmark: speech SSL features of a corpus, the plain loop against the experiment's
extraction (audio seconds per second).

One round computes every hidden state of a wav2vec 2.0 model (randomly initialised: the
weights do not change the work) for every file of an IEMOCAP-like corpus (lengths drawn
log-normal around 3 s, 0.6-12 s, 16-bit WAV at 16 kHz):

  plain loop          the loop a user writes: each file read with soundfile, through the
                      checkpoint's feature extractor and the model with
                      ``output_hidden_states`` under ``torch.no_grad``, one file at a time,
                      torch's threads (every core), the states stacked into a float32 array
  cpc-fast            ``SSLFeatureCache.build`` in this process with the same threads: the
                      audio decoded once before (the experiment's prepared corpus),
                      ``torch.inference_mode``, its defaults for the device, every state
                      written to the float16 cache on disk
  cpc-fast, N workers the extraction's parts spread over N worker processes of one thread
                      each, as an experiment with ``--cpu-processes N`` runs them (the workers
                      are started and the model loaded before the round: an experiment's
                      workers live for the whole experiment); N = the cores

On a GPU (group "... on a GPU"): the plain loop on the GPU in float32 against cpc-fast with
bf16 autocast and batches of 300 s of padded audio (not checked against each other: bf16
is not float32). Under the GPU check's deadline the CPU cases are not measured. Before
timing, the CPU providers' features are checked against the plain loop's: equal to within
float16 rounding.

Shapes: ``small`` (hidden 256, 4 layers, 256-channel convolutions: a tenth of BASE's work),
60 s of audio; ``base`` (wav2vec 2.0 BASE's sizes, 95 M parameters), 40 s on a CPU; 600 s
on a GPU.

    pytest --benchmark -k ssl
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _harness import (
    DEADLINE_ENV,
    ON_GPU,
    Case,
    cpu_cores,
    import_needing_soundfile,
    measure,
    show,
)

SHAPES = {
    "small": {
        "config": {
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
            "conv_dim": (256,) * 7,
        },
        "seconds": 60.0,
    },
    "base": {"config": {}, "seconds": 40.0},  # Wav2Vec2Config()'s defaults are BASE's
}
GPU_SECONDS = 600.0
PART_SECONDS = 2.0  # parts small enough to share out evenly among the workers
FP16 = 2.0**-10  # one float16 ulp, relative


def _corpus(root: Path, seconds: float, sf) -> list[Path]:
    rng = np.random.default_rng(0)
    files, total = [], 0.0
    while total < seconds:
        length = float(np.clip(rng.lognormal(np.log(3.0), 0.6), 0.6, 12.0))
        wave = 0.1 * rng.standard_normal(int(length * 16000))
        files.append(root / f"u{len(files):04d}.wav")
        sf.write(files[-1], wave.astype(np.float32), 16000, subtype="PCM_16")
        total += length
    return files


def _setting(tmp: Path, shape: str, seconds: float, case: Case) -> dict:
    """The model folder, the WAV files and the prepared corpus."""
    try:
        import transformers  # optional: the ssl extra
    except ImportError:
        case.skip("transformers is not installed (pip install 'cpc-fast[ssl]')")
    import soundfile as sf  # import_needing_soundfile has found it

    from cpc_fast.data.corpora.manifest import load_manifest

    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(**SHAPES[shape]["config"])
    transformers.AutoModel.from_config(config).save_pretrained(tmp / "model")
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp / "model")
    files = _corpus(tmp, seconds, sf)
    rows = [f"{f.name},1,1,1,train,s0" for f in files]
    (tmp / "manifest.csv").write_text(
        "path,activation,valence,dominance,split,speaker\n" + "\n".join(rows) + "\n"
    )
    corpus = load_manifest(tmp)
    corpus.prepare(tmp / "prepared")
    audio = sum(sf.info(f).frames for f in files) / 16000
    return {"model": tmp / "model", "files": files, "corpus": corpus, "audio": audio, "root": tmp}


def _plain_loop(folder: Path, files: list[Path], device: str):
    """The user's loop (module docstring); returns a function of no arguments."""
    import soundfile as sf
    import transformers

    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).to(device).eval()

    def run() -> list[np.ndarray]:
        out = []
        for path in files:
            wave, rate = sf.read(path, dtype="float32")
            inputs = extractor(wave, sampling_rate=rate, return_tensors="pt").to(device)
            with torch.no_grad():
                states = model(**inputs, output_hidden_states=True).hidden_states
            out.append(torch.cat(states, dim=-1)[0].float().cpu().numpy())
        return out

    return run


def _same_features(reference: list[np.ndarray]):
    def check(features) -> None:
        assert len(features) == len(reference)
        for i, expected in enumerate(reference):
            atol = FP16 * float(np.abs(expected).max())
            got = features[i].astype(np.float32)
            np.testing.assert_allclose(got, expected, rtol=FP16, atol=atol, err_msg=f"file {i}")

    return check


# -- the workers of "cpc-fast, N workers" (spawned processes: module-level state) ---------

_WORKER: dict = {}


def _start_worker(model: str, root: str) -> None:
    from cpc_fast.data.corpora.manifest import load_manifest
    from cpc_fast.features.upstream import load_upstream

    torch.set_num_threads(1)
    corpus = load_manifest(root)
    corpus.prepare(Path(root) / "prepared", progress=False)  # complete: opened, not decoded
    _WORKER.update(corpus=corpus, upstream=load_upstream(model))


def _build_part(cache_dir: str, part: int) -> None:
    from cpc_fast.features.ssl import SSLFeatureCache
    from cpc_fast.models.ssl_layers import LayerChoice

    upstream = _WORKER["upstream"]
    choice = LayerChoice.parse("weighted")
    cache = SSLFeatureCache(_WORKER["corpus"], upstream.info, choice, cache_dir)
    cache.build_part(part, upstream)


PROVIDERS = ["plain loop", "cpc-fast", "cpc-fast, N workers"]


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ssl_extraction(benchmark, tmp_path, shape, provider):
    workers = cpu_cores()
    name = provider.replace("N", str(workers))
    seconds = SHAPES[shape]["seconds"]
    case = Case(
        f"SSL features of a corpus, every hidden state ({shape})",
        name,
        "plain loop",
        f"wav2vec 2.0 {shape}, {seconds:.0f} s of 0.6-12 s files",
        device="cpu",
        needs_s=120.0,
    )
    if os.environ.get(DEADLINE_ENV):
        case.skip("the GPU check's budget is for the GPU cases")
    (ssl,) = import_needing_soundfile(case, "cpc_fast.features.ssl")
    if provider == PROVIDERS[2] and workers < 2:
        case.skip("one core: no second worker")
    from cpc_fast.features.upstream import load_upstream
    from cpc_fast.models.ssl_layers import LayerChoice

    setting = _setting(tmp_path, shape, seconds, case)
    plain = _plain_loop(setting["model"], setting["files"], "cpu")
    reference = plain()
    rounds = iter(range(10**6))

    def fresh_cache() -> tuple:
        return (tmp_path / f"cache{next(rounds)}",)

    upstream = load_upstream(setting["model"])

    def plan(cache_dir: Path):
        choice = LayerChoice.parse("weighted")
        return ssl.SSLFeatureCache(
            setting["corpus"], upstream.info, choice, cache_dir, part_seconds=PART_SECONDS
        )

    pool = None
    if provider == PROVIDERS[0]:
        target, setup, check = plain, None, None
    elif provider == PROVIDERS[1]:

        def target(cache_dir: Path):
            return plan(cache_dir).build(upstream)

        setup, check = fresh_cache, _same_features(reference)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(setting["model"]), str(setting["root"])),
        )
        list(pool.map(int, range(workers)))  # every worker started and its model loaded

        def target(cache_dir: Path):
            cache = plan(cache_dir)  # writes the layout every worker then follows
            list(pool.map(_build_part, [str(cache_dir)] * cache.num_parts, range(cache.num_parts)))
            return cache.finish()

        setup, check = fresh_cache, _same_features(reference)
    try:
        median = measure(benchmark, case, target, setup=setup, check=check)
    finally:
        if pool is not None:
            pool.shutdown()
    if median is not None:
        show(benchmark, **{"audio s/s": f"{setting['audio'] / median:,.1f}"})


@pytest.mark.parametrize("provider", ["plain loop", "cpc-fast"])
def test_ssl_extraction_on_a_gpu(benchmark, tmp_path, provider):
    case = Case(
        "SSL features of a corpus, every hidden state, on a GPU (base)",
        provider,
        "plain loop",
        f"wav2vec 2.0 base, {GPU_SECONDS:.0f} s of 0.6-12 s files; cpc-fast: bf16, 300-s batches",
        device="cuda" if ON_GPU else "cpu",
        needs_s=120.0,
    )
    if not ON_GPU:
        case.skip("no CUDA device")
    (ssl,) = import_needing_soundfile(case, "cpc_fast.features.ssl")
    from cpc_fast.features.upstream import load_upstream
    from cpc_fast.models.ssl_layers import LayerChoice

    setting = _setting(tmp_path, "base", GPU_SECONDS, case)
    if provider == "plain loop":
        target, setup = _plain_loop(setting["model"], setting["files"], "cuda"), None
    else:
        upstream = load_upstream(setting["model"]).to("cuda")

        def target(cache_dir: Path):
            cache = ssl.SSLFeatureCache(
                setting["corpus"],
                upstream.info,
                LayerChoice.parse("weighted"),
                cache_dir,
                precision="bf16",
            )
            return cache.build(upstream)

        def setup() -> tuple:
            return (Path(tempfile.mkdtemp(dir=tmp_path)),)

    median = measure(benchmark, case, target, setup=setup)
    if median is not None:
        show(benchmark, **{"audio s/s": f"{setting['audio'] / median:,.1f}"})
