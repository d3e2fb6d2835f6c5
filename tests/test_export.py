"""``cpc-fast export``: self-contained Hub-layout folders of every setup and of a CPC run, and
their ONNX graphs run with onnxruntime against PyTorch (waveforms of 0.3 s to 60 s, padded
batches of mixed lengths), with onnx and onnxruntime required in CI (the ``export`` extra).

One experiment folder (the four setups, ``pre`` on two folds that share its CPC) is built
from random weights once per module and exported once, with ONNX.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import one_error_line, run_main
from optional_deps import need

from cpc_fast.config import experiment as experiment_config
from cpc_fast.emotion.export import command_line, export_models
from cpc_fast.emotion.model_io import CPC_FILE, EmotionModel, load_model, save_model
from cpc_fast.emotion.onnx_export import (
    INT8_NAME,
    ONNX_NAME,
    OnnxEmotionRunner,
    OnnxRunner,
    check_graph,
)
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import module_digest
from cpc_fast.features.lfbe import LFBE, LFBEConfig
from cpc_fast.io.atomic import write_json
from cpc_fast.models import load_cpc, save_cpc
from cpc_fast.models.cpc import CPCConfig, CPCModel
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

FIXTURES = Path(__file__).parent / "fixtures"
UNITS = {  # exported folder -> setup
    "sup/fold1/run1": "sup",
    "joint/fold1/run1": "joint",
    "mini/fold1/run1": "mini",
    "pre/fold1/run1": "pre",
    "pre/fold2/run1": "pre",
}
SCALER = {"mean": [3.1, 2.7, 3.3], "std": [0.6, 0.9, 0.75]}
TEST_CCC = {"ccc_avg": 0.5, "ccc_act": 0.61, "ccc_val": 0.32, "ccc_dom": 0.57}
ATOL = 1e-4  # the issue's bound, in the labels' units


def _recognizer(input_dim: int, seed: int) -> EmotionRecognizer:
    torch.manual_seed(seed)
    recognizer = EmotionRecognizer(RecognizerConfig(input_dim=input_dim))
    recognizer.set_input_normalization(torch.randn(input_dim), torch.rand(input_dim) + 0.5)
    return recognizer


def _unit(out: Path, name: str, features: dict, recognizer, cpc=None) -> None:
    setup, fold, run = name.split("/")
    unit = out / name
    unit.mkdir(parents=True)
    config = {
        "setup": setup,
        "dataset": "synthetic",
        "fold": fold,
        "run": int(run[3:]),
        "features": features,
        "recognizer": recognizer.config.to_dict(),
        "label_scaler": SCALER,
        "label_range": [1.0, 5.0],
    }
    save_model(unit, recognizer, config, cpc=cpc)
    summary = {"test": TEST_CCC, "epochs": 3, "best_epoch": 2, "num_train": 84, "num_test": 24}
    write_json(unit / "result.json", summary)
    (unit / "done").write_text("x\n")


def _cpc_run(folder: Path, config: CPCConfig, seed: int) -> tuple[Path, str]:
    torch.manual_seed(seed)
    model = CPCModel(config)
    folder.mkdir(parents=True)
    save_cpc(model, folder / "model.safetensors")
    return folder.resolve(), module_digest(model)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experiment folder in the layout `cpc-fast experiment` writes, random weights."""
    out = tmp_path_factory.mktemp("export") / "exp"
    config = experiment_config.tiny(setups=("sup", "joint", "mini", "pre"), out=str(out))
    out.mkdir()
    write_json(
        out / "experiment.json",
        {
            "config": config.to_dict(),
            "description": "synthetic emotion corpus (tiny)",
            "protocol": "leave-one-session-out, 5 fold(s), validation: speaker",
        },
    )
    mini, mini_digest = _cpc_run(out / "mini/fold1/cpc", CPCConfig(16, context_dim=16), 1)
    pre, pre_digest = _cpc_run(
        out.parent / "pretrained", CPCConfig(24, context_dim=24, encoder_norm="channel"), 2
    )
    _unit(
        out, "sup/fold1/run1", {"kind": "lfbe", "lfbe": LFBEConfig().to_dict()}, _recognizer(40, 3)
    )
    torch.manual_seed(4)
    joint = CPCModel(CPCConfig(encoder_dim=16, context_dim=16, encoder_norm="channel"))
    joint_features = {"kind": "joint", "cpc_config": joint.config.to_dict()}
    _unit(out, "joint/fold1/run1", joint_features, _recognizer(16, 5), cpc=joint)
    mini_features = {"kind": "cpc", "cpc": {"path": str(mini), "digest": mini_digest}}
    _unit(out, "mini/fold1/run1", mini_features, _recognizer(16, 6))
    for fold, seed in (("fold1", 7), ("fold2", 8)):
        pre_features = {"kind": "cpc", "cpc": {"path": str(pre), "digest": pre_digest}}
        _unit(out, f"pre/{fold}/run1", pre_features, _recognizer(24, seed))
    return out


@pytest.fixture(scope="module")
def exported(experiment: Path) -> Path:
    need("onnx")
    need("onnxruntime")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = experiment.parent / "models"
    written = export_models(experiment, out, onnx=True)
    torch.set_num_threads(threads)
    assert sorted(str(w.folder.relative_to(out)) for w in written) == sorted(UNITS)
    assert all(w.onnx_difference is not None and w.onnx_difference < ATOL for w in written)
    return out


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32)


# -- the Hub layout --------------------------------------------------------------------------


def test_every_setup_is_a_self_contained_folder(exported: Path, experiment: Path) -> None:
    for name, setup in UNITS.items():
        folder = exported / name
        files = {p.name for p in folder.iterdir()}
        expected = {"config.json", "model.safetensors", "README.md", ONNX_NAME}
        assert files == expected | ({CPC_FILE} if setup in ("mini", "pre") else set()), name
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "cpc-fast-emotion" and config["setup"] == setup
        if setup in ("mini", "pre"):
            assert config["features"]["cpc"]["file"] == CPC_FILE
            assert "path" not in config["features"]["cpc"]
        # the same model as the experiment's unit, to the bit
        wave = _noise(1.3, 0)
        np.testing.assert_array_equal(
            EmotionModel.from_pretrained(folder).predict(wave),
            load_model(experiment / name).predict(wave),
        )


def test_the_frozen_cpc_is_stored_once_per_digest(exported: Path) -> None:
    one, two = (exported / f"pre/{fold}/run1" / CPC_FILE for fold in ("fold1", "fold2"))
    assert os.path.samefile(one, two)  # hard-linked: the same weights, stored once
    assert not os.path.samefile(one, exported / "mini/fold1/run1" / CPC_FILE)
    assert load_cpc(one).config.encoder_dim == 24


def test_exported_folders_load_without_the_experiment(
    exported: Path, tmp_path: Path, capsys
) -> None:
    """Copied elsewhere, the experiment and its CPC runs out of reach: predict still works,
    and a changed CPC file is refused by its digest."""
    copy = tmp_path / "copy"
    shutil.copytree(exported / "mini/fold1/run1", copy)
    wav = tmp_path / "a.wav"
    need("soundfile").write(wav, _noise(0.8, 1), 16000, subtype="FLOAT")
    code, out, err = run_main(["predict", "--model", str(copy), str(wav), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["file"] == str(wav)
    torch.manual_seed(99)
    save_cpc(CPCModel(CPCConfig(16, context_dim=16)), copy / CPC_FILE)
    code, _, err = run_main(["predict", "--model", str(copy), str(wav)], capsys)
    assert "not the one this model was trained on" in one_error_line(code, err)


def test_the_model_card(exported: Path) -> None:
    hub = need("huggingface_hub")
    path = exported / "pre/fold2/run1" / "README.md"
    card = hub.ModelCard.load(path)
    assert card.data.library_name == "cpc-fast"
    assert card.data.license is None  # left for the owner, in the header:
    assert "\nlicense:  # yours to fill in" in path.read_text().split("---")[1]
    text = card.text
    assert "| setup | `pre` (preCPC)" in text
    assert "| data set | synthetic: synthetic emotion corpus (tiny) |" in text
    assert "| fold, run | fold2, run 1 |" in text
    assert "**0.500** average (activation 0.610, valence 0.320, dominance 0.570)" in text
    assert "`cpc-fast experiment --preset tiny --out " in text
    assert "not set: fill in `license:`" in text


def test_command_line_rebuilds_the_config() -> None:
    base = experiment_config.tiny()
    config = experiment_config.tiny(setups=("sup", "pre"), runs=3, skip_bad=True, lr=5e-4)
    line = command_line(["cpc-fast", "experiment", "--preset", "tiny"], config, base)
    assert line == (
        "cpc-fast experiment --preset tiny --setups sup,pre --runs 3 --lr 0.0005 --skip-bad"
    )


def test_re_export_replaces_an_export_and_refuses_other_folders(
    exported: Path, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "again"
    code, out, err = run_main(
        ["export", str(exported / "sup/fold1/run1"), "--out", str(target)], capsys
    )
    assert code == 0, err
    assert out == f"{target} (sup): README.md, config.json, model.safetensors\n"
    first = (target / "config.json").read_bytes()
    export_models(exported / "sup/fold1/run1", target)  # an export replaces an export
    assert (target / "config.json").read_bytes() == first
    assert "README.md" in {p.name for p in target.iterdir()}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="holds files other than an exported model"):
        export_models(exported / "sup/fold1/run1", other)
    assert (other / "notes.txt").read_text() == "mine"


def test_from_pretrained_reads_a_hub_repository_from_the_cache(
    exported: Path, tmp_path: Path
) -> None:
    """A repo id goes through huggingface_hub (here its cache, offline)."""
    need("huggingface_hub")
    snapshot = tmp_path / "models--me--ser" / "snapshots" / "abc123"
    shutil.copytree(exported / "joint/fold1/run1", snapshot)
    (tmp_path / "models--me--ser" / "refs").mkdir()
    (tmp_path / "models--me--ser" / "refs" / "main").write_text("abc123")
    model = EmotionModel.from_pretrained("me/ser", cache_dir=tmp_path, local_files_only=True)
    wave = _noise(0.5, 2)
    np.testing.assert_array_equal(
        model.predict(wave),
        EmotionModel.from_pretrained(exported / "joint/fold1/run1").predict(wave),
    )


def test_push_to_hub_uploads_the_folder(exported: Path, monkeypatch) -> None:
    hub = need("huggingface_hub")
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})

        def upload_folder(self, repo_id, repo_type, folder_path, **kwargs):
            calls[repo_id] = sorted(p.name for p in Path(folder_path).iterdir())
            return "https://huggingface.co/me/ser/commit/1"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    model = EmotionModel.from_pretrained(exported / "pre/fold1/run1")
    assert model.push_to_hub("me/ser").endswith("/commit/1")
    assert calls["me/ser"] == ["README.md", "config.json", CPC_FILE, "model.safetensors"]


# -- ONNX ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["sup/fold1/run1", "joint/fold1/run1", "mini/fold1/run1", "pre/fold1/run1"]
)
def test_onnx_matches_pytorch_alone_and_in_padded_batches(exported: Path, name: str) -> None:
    graph = exported / name / ONNX_NAME
    check_graph(graph)
    runner = OnnxEmotionRunner(graph)
    model = load_model(exported / name)
    for seconds in (0.3, 2.7, 60.0):
        wave = _noise(seconds, 3)
        got = runner.predict_batch([wave])[0]
        np.testing.assert_allclose(got, model.predict(wave), atol=ATOL, rtol=0, err_msg=seconds)
    waves = [_noise(s, i) for i, s in enumerate((1.0, 0.3, 4.44, 0.0101, 2.5))]
    expected = np.stack([model.predict(w) for w in waves])
    np.testing.assert_allclose(runner.predict_batch(waves), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.predict_batch(waves), expected, atol=ATOL, rtol=0)


def test_onnx_graph_reads_lengths_not_padding(exported: Path) -> None:
    """Whatever the padding holds (not zeros here), each row is the row alone; a row
    shorter than one frame is NaN, not a number."""
    runner = OnnxRunner(exported / "mini/fold1/run1" / ONNX_NAME)
    model = load_model(exported / "mini/fold1/run1")
    wave = _noise(1.0, 5)
    batch = np.stack([wave, np.concatenate([wave[:8000], _noise(0.5, 6)])])
    outputs = np.stack(runner.run(batch, np.array([16000, 8000])), axis=1)
    np.testing.assert_allclose(outputs[0], model.predict(wave), atol=ATOL, rtol=0)
    np.testing.assert_allclose(outputs[1], model.predict(wave[:8000]), atol=ATOL, rtol=0)
    short = np.stack(runner.run(batch, np.array([16000, 100])), axis=1)
    assert np.isnan(short[1]).all() and np.isfinite(short[0]).all()


def test_the_cpc_of_a_run_exports_with_its_card_and_graph(tmp_path: Path) -> None:
    need("onnxruntime")
    out = tmp_path / "cpc"
    (item,) = export_models(FIXTURES / "cpc_run_v1", out, onnx=True)
    assert item.what == "cpc" and item.onnx_difference < ATOL
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
        ONNX_NAME,
    }
    model = CPCModel.from_pretrained(out)
    reference = load_cpc(FIXTURES / "cpc_run_v1")
    assert module_digest(model) == module_digest(reference)
    card = (out / "README.md").read_text()
    assert "| training | 2 steps" in card and "`cpc-fast pretrain --preset tiny" in card
    runner = OnnxRunner(out / ONNX_NAME)
    waves = [_noise(s, 7) for s in (0.3, 1.7)]
    batch = np.zeros((2, waves[1].shape[0]), np.float32)
    batch[0, : waves[0].shape[0]], batch[1] = waves
    z, c, frames = runner.run(batch, np.array([w.shape[0] for w in waves]))
    assert frames.tolist() == [w.shape[0] // 160 for w in waves]
    with torch.inference_mode():
        for b, w in enumerate(waves):
            x = torch.from_numpy(w)[None]
            np.testing.assert_allclose(z[b, : frames[b]], reference.encode(x)[0], atol=ATOL)
            np.testing.assert_allclose(c[b, : frames[b]], reference.context(x)[0], atol=ATOL)


def test_int8_graph_is_written_and_runs(exported: Path, tmp_path: Path) -> None:
    need("onnxruntime")
    out = tmp_path / "int8"
    export_models(exported / "sup/fold1/run1", out, onnx=True, int8=True)
    runner = OnnxEmotionRunner(out / INT8_NAME)
    assert np.isfinite(runner.predict_batch([_noise(1.0, 8)])).all()


@pytest.mark.parametrize("far", [1.0, float("nan")])
def test_a_graph_that_strays_from_pytorch_is_not_kept(
    exported: Path, tmp_path: Path, monkeypatch, far: float
) -> None:
    from cpc_fast.emotion import export as export_module

    monkeypatch.setattr(export_module, "compare_with_torch", lambda model, runner: far)
    out = tmp_path / "strays"
    with pytest.raises(UserInputError, match="onnxruntime's outputs differ from PyTorch's by"):
        export_models(exported / "sup/fold1/run1", out, onnx=True)
    assert not out.exists()  # nothing half-written is left


def test_lfbe_dft_as_a_convolution_matches_the_stft() -> None:
    """The LFBE a traced graph holds (a convolution with DFT kernels) against torch.stft's,
    both against a float64 numpy FFT of the same frames."""
    lfbe = LFBE()
    wave = torch.from_numpy(_noise(0.77, 9)).unsqueeze(0)
    by_stft, by_conv = lfbe.power(wave), lfbe.power_by_convolution(wave)
    x = np.pad(wave[0].double().numpy(), (120, 400))
    window = np.hamming(400)
    frames = np.stack([x[160 * t : 160 * t + 400] * window for t in range(wave.shape[1] // 160)])
    reference = np.abs(np.fft.rfft(frames, 512)).T ** 2  # (257, L): the window at 0..400
    scale = reference.max()
    np.testing.assert_allclose(by_stft[0].double().numpy(), reference, atol=1e-5 * scale)
    np.testing.assert_allclose(by_conv[0].double().numpy(), reference, atol=1e-5 * scale)


# -- the extras ------------------------------------------------------------------------------


def test_a_missing_extra_is_asked_for_by_name(
    exported: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    for module in ("onnx", "onnxruntime", "huggingface_hub"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    args = ["export", str(exported / "sup/fold1/run1"), "--out", str(tmp_path / "x"), "--onnx"]
    code, _, err = run_main(args, capsys)
    line = one_error_line(code, err)
    assert "--onnx needs onnx: pip install 'cpc-fast[export]'" in line
    assert not (tmp_path / "x").exists()
    code, _, err = run_main(["predict", "--model", "me/ser", "a.wav"], capsys)
    assert "needs huggingface_hub: pip install 'cpc-fast[export]'" in one_error_line(code, err)
