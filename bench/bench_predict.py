"""Benchmark: one process predicting 200 clips of 1-10 s (16-bit WAV files, 16 kHz), the ways
``cpc-fast predict`` can run, and int8 quantization's speed beside its change of CCC.

Groups "predict 200 clips" (one per setup; each round reads and predicts every clip):

  per-file                 ``cpc-fast predict`` before batching: each file read, then
                           ``EmotionModel.predict`` on it alone (its loop, kept here)
  batched                  today's ``predict``: headers first, length-sorted batches of 16
                           (``EmotionModel.predict_batch``: on a CPU the CPC's GRU runs on
                           the batch, the rest row by row), one batch per core at a time on
                           one thread each, the next batches decoded by a thread meanwhile
  onnxruntime              ``predict --runtime onnxruntime``: the exported graph, one file a
                           run, one run per core at a time on one thread each (on this CPU
                           the graph's padded batches cost more than they save), graph
                           optimisations on
  onnxruntime, no graph optimisations
                           the same with ``ORT_DISABLE_ALL``

``pre`` is the paper's CPC (encoder 128, GRU 256) with the paper's recognizer, ``sup`` the
LFBE with it; random weights (the work does not depend on them). Every provider's
predictions are checked against per-file's (1e-4 in the labels' units). Per-file runs with
torch's default threads (one per core), as ``predict`` did. Columns: clips/s and audio
seconds per second.

Group "int8 on trained models" (the held-out test split of fold 1 of the tiny synthetic
corpus, 24 clips, models of the tiny preset trained on the fold's training split for 10
epochs): ``onnxruntime`` against ``onnxruntime int8`` (``cpc-fast export --int8``: dynamic
int8 quantization of the weights), run as ``predict --runtime onnxruntime`` runs them, each
with its test CCC and the change int8 makes.

    pytest --benchmark -k predict
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
from _harness import Case, import_needing_soundfile, measure, show

CLIPS = 200
SECONDS = (1.0, 10.0)
BATCH = 16
PROVIDERS = ["per-file", "batched", "onnxruntime", "onnxruntime, no graph optimisations"]
SETUPS = ("pre", "sup")


def _model(setup: str):
    from cpc_fast.emotion.model_io import EmotionModel
    from cpc_fast.features.lfbe import LFBE
    from cpc_fast.models.cpc import CPCConfig, CPCModel
    from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

    torch.manual_seed(0)
    if setup == "sup":
        front_end, features, dim = LFBE(), {"kind": "lfbe", "lfbe": {}}, 40
    else:
        front_end = CPCModel(CPCConfig())
        features = {"kind": "cpc", "cpc": {"path": "-", "digest": "-"}}
        dim = front_end.config.context_dim
    recognizer = EmotionRecognizer(RecognizerConfig(input_dim=dim))
    config = {
        "setup": setup,
        "features": features,
        "recognizer": recognizer.config.to_dict(),
        "label_scaler": {"mean": [3.0, 3.0, 3.0], "std": [1.0, 1.0, 1.0]},
    }
    return EmotionModel(recognizer, config, front_end.eval()).eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """200 WAV files of 1-10 s (uniform), noise at speech-like level."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(CLIPS):
        samples = int(rng.uniform(*SECONDS) * 16000)
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, 0.1 * rng.standard_normal(samples), 16000, subtype="PCM_16")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each setup's model and its exported graph."""
    from cpc_fast.emotion.onnx_export import export_emotion_onnx

    folder = tmp_path_factory.mktemp("graphs")
    built = {}
    for setup in SETUPS:
        model = _model(setup)
        built[setup] = (model, export_emotion_onnx(model, folder / f"{setup}.onnx"))
    return built


def _per_file(model, paths):
    """``cpc-fast predict``'s loop before batching (read, count the header, predict)."""
    from cpc_fast.data.audio import audio_info, read_audio

    values = []
    for path in paths:
        wave = read_audio(path)
        audio_info(path)
        values.append(model.predict(wave))
    return np.stack(values)


def _batched(predict_batch, paths, *, max_items: int, use_threads=None):
    """``cpc-fast predict``'s pipeline: one worker per core (``available_cpus``)."""
    from cpc_fast.emotion.batch_predict import index_files, predict_clips
    from cpc_fast.io.cpus import available_cpus

    clips = index_files(paths, 16000)
    order = {id(c): i for i, c in enumerate(clips)}
    out = np.empty((len(paths), 3))
    threads = torch.get_num_threads()
    try:
        for result in predict_clips(
            predict_batch,
            clips,
            sample_rate=16000,
            min_samples=160,
            max_items=max_items,
            workers=available_cpus(),
            use_threads=use_threads,
        ):
            out[order[id(result.clip)]] = result.values
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_predict(benchmark, clips, models, setup, provider):
    group = f"predict {CLIPS} clips of 1-10 s · {setup}"
    shape = "paper's CPC and recognizer" if setup == "pre" else "LFBE, paper's recognizer"
    case = Case(group, provider, "per-file", shape, device="cpu", needs_s=120)
    import_needing_soundfile(case, "cpc_fast.emotion.batch_predict")
    model, graph = models[setup]
    if provider == "per-file":
        target = lambda: _per_file(model, clips)  # noqa: E731
    elif provider == "batched":
        target = lambda: _batched(  # noqa: E731
            model.predict_batch, clips, max_items=BATCH, use_threads=torch.set_num_threads
        )
    else:
        from cpc_fast.emotion.onnx_export import OnnxEmotionRunner

        runner = OnnxEmotionRunner(graph, optimize=provider == "onnxruntime", threads=1)
        target = lambda: _batched(runner.predict_batch, clips, max_items=1)  # noqa: E731
    reference = _per_file(model, clips[:12])

    def check(values):
        np.testing.assert_allclose(values[:12], reference, atol=1e-4, rtol=0)

    seconds = measure(benchmark, case, target, check=check)
    if seconds is not None:
        audio = sum(sf.info(p).frames for p in clips) / 16000
        show(
            benchmark,
            **{"clips/s": f"{CLIPS / seconds:.1f}", "audio s/s": f"{audio / seconds:,.0f}"},
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``sup`` and ``pre`` units of the tiny preset, fold 1, exported with ONNX and int8;
    the fold's test clips and labels."""
    from cpc_fast.config import experiment, pretrain
    from cpc_fast.data.corpora.synthetic_emotion import load_synthetic
    from cpc_fast.emotion.export import export_models
    from cpc_fast.emotion.launch import run_experiment
    from cpc_fast.models import save_cpc
    from cpc_fast.models.cpc import CPCModel

    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    (root / "cpc").mkdir()
    save_cpc(CPCModel(pretrain.tiny().model), root / "cpc" / "model.safetensors")
    config = experiment.tiny(
        setups=SETUPS, pretrained=str(root / "cpc"), folds=(1,), runs=1, out=str(root / "exp")
    )
    threads = torch.get_num_threads()
    run_experiment(config, progress=False)
    torch.set_num_threads(threads)
    export_models(root / "exp", root / "models", onnx=True, int8=True)
    corpus = load_synthetic("tiny")
    test = corpus.folds()[0].test
    waves = [corpus.wave(i) for i in test]
    return root / "models", waves, corpus.labels(test)


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("provider", ["onnxruntime", "onnxruntime int8"])
def test_int8(benchmark, trained, setup, provider):
    from cpc_fast.emotion.onnx_export import INT8_NAME, ONNX_NAME, OnnxEmotionRunner
    from cpc_fast.io.cpus import available_cpus
    from cpc_fast.losses.ccc import ccc

    folder, waves, labels = trained
    case = Case(
        f"int8 on trained models · {setup}",
        provider,
        "onnxruntime",
        f"tiny preset, synthetic fold 1: {len(waves)} held-out test clips",
        device="cpu",
    )
    unit = folder / setup / "fold1" / "run1"
    runners = {name: OnnxEmotionRunner(unit / name, threads=1) for name in (ONNX_NAME, INT8_NAME)}
    graph = INT8_NAME if provider.endswith("int8") else ONNX_NAME

    def predict(name: str) -> np.ndarray:
        """As ``predict --runtime onnxruntime``: a file a run, one run per core at a time."""
        with ThreadPoolExecutor(available_cpus()) as pool:
            return np.concatenate(list(pool.map(lambda w: runners[name].predict_batch([w]), waves)))

    def scores(name: str) -> float:
        pred = predict(name)
        return float(ccc(torch.from_numpy(pred), torch.from_numpy(labels)).mean())

    seconds = measure(benchmark, case, lambda: predict(graph))
    if seconds is not None:
        fp32, mine = scores(ONNX_NAME), scores(graph)
        show(
            benchmark,
            **{
                "clips/s": f"{len(waves) / seconds:.1f}",
                "test CCC avg": f"{mine:.4f}",
                "CCC change": f"{mine - fp32:+.4f}",
            },
        )
