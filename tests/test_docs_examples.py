"""Every ```python block of the documentation runs as written (on CPU: the reference backend).

The pages are README.md and docs/**/*.md. A page's blocks run in order in one namespace (a
later block may use an earlier one's names), each after ``torch.manual_seed(0)``, with
``device = "cuda"`` replaced by the device here. A page whose blocks use inputs they do not
make (a model, audio files, a run folder) gets them from ``_GIVEN``; any other page's blocks
must run alone, so a new page's example is run the day it is written.

The drop-in loss pages are checked further: the Hugging Face recipe must reproduce the
model's own total loss, every other recipe must give a finite loss and finite gradients, and
the toolkits' accuracies must lie in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from optional_deps import need
from wav2vec2_fixtures import hf_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The drop-in loss's pages: (page, block) -> what the recipe is.
TOOLKITS = [
    ("integrations/fairseq.md", 0, "fairseq"),
    ("integrations/speechbrain.md", 0, "speechbrain"),
    ("integrations/nemo.md", 0, "nemo"),
    ("integrations/cpc_audio.md", 0, "cpc_audio"),
    ("README.md", 0, "speechbrain"),
]
SELF_CONTAINED = [
    ("integrations/fairseq.md", 1, "fairseq-style, Hugging Face signature"),
    ("integrations/cpc_audio.md", 2, "cpc_audio"),
    ("integrations/index.md", 0, "general"),
]
HUGGING_FACE = "integrations/huggingface.md"
# The page's DataLoader asks for 4 workers, more than CI's 2 cores; none is started here.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def _path(page: str) -> Path:
    return ROOT / page if page == "README.md" else DOCS / page


def _blocks(page: str) -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", _path(page).read_text(), flags=re.S | re.M)
    return [b.replace('device = "cuda"', f'device = "{DEVICE}"') for b in blocks]


def _run(page: str, scope: dict | None = None, upto: int | None = None) -> list[dict]:
    """Runs the page's blocks in order in one namespace (up to block ``upto`` included, or
    all); the namespace after each block."""
    scope = {} if scope is None else scope
    after = []
    blocks = _blocks(page)
    for block in blocks if upto is None else blocks[: upto + 1]:
        torch.manual_seed(0)
        exec(compile(block, f"{page} (python block)", "exec"), scope)
        after.append(dict(scope))
    return after


def _pages_with_examples() -> list[str]:
    pages = ["README.md", *(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))]
    return sorted(p for p in pages if _blocks(p))


# ---- inputs the pages name but do not make ------------------------------------------------


def _audio_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    import soundfile

    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate((1.0, 2.5, 12.0)):
        path = tmp_path / f"utt{i}.wav"
        soundfile.write(path, rng.uniform(-0.5, 0.5, int(16000 * seconds)), 16000)
        paths.append(str(path))
    dataset = [rng.standard_normal(n).astype(np.float32) for n in (24000, 200000)]
    return {"paths": paths, "dataset": dataset}


def _run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    from cpc_fast import CPCConfig, CPCModel
    from cpc_fast.models.loading import save_cpc

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ls100").mkdir(parents=True)
    save_cpc(CPCModel(CPCConfig()), tmp_path / "runs" / "ls100" / "model.safetensors")
    return {"wave": torch.randn(2, 16000)}


def _recognizer_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    return {
        "c": torch.randn(2, 50, 256),
        "frames": torch.tensor([50, 30]),
        "target": torch.rand(2, 3),
        "wave": torch.randn(2, 16000),
    }


def _exported_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """models/pre-fold1 (a tiny `pre` model, its ONNX graph) and models/cpc-ls100 as
    `cpc-fast export --onnx` writes them, two clips, and a Hub that takes uploads offline."""
    import soundfile

    from cpc_fast import CPCConfig, CPCModel
    from cpc_fast.emotion.export import export_models
    from cpc_fast.emotion.model_io import save_model
    from cpc_fast.features.cache import module_digest
    from cpc_fast.models.loading import save_cpc
    from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig

    hub = need("huggingface_hub")

    class OfflineHub:  # push_to_hub's calls, answered here
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})

        def upload_folder(self, repo_id, repo_type, folder_path, **kwargs):
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(hub, "HfApi", OfflineHub)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cpc = CPCModel(CPCConfig(encoder_dim=16, context_dim=16, encoder_norm="channel"))
    (tmp_path / "runs/ls100").mkdir(parents=True)
    save_cpc(cpc, tmp_path / "runs/ls100/model.safetensors")
    unit = tmp_path / "exp/pre/fold1/run1"
    unit.mkdir(parents=True)
    config = {
        "setup": "pre",
        "features": {
            "kind": "cpc",
            "cpc": {"path": str(tmp_path / "runs/ls100"), "digest": module_digest(cpc)},
        },
        "recognizer": RecognizerConfig(input_dim=16).to_dict(),
        "label_scaler": {"mean": [3.0, 3.0, 3.0], "std": [1.0, 1.0, 1.0]},
    }
    save_model(unit, EmotionRecognizer(RecognizerConfig(input_dim=16)), config)
    export_models(unit, tmp_path / "models/pre-fold1", onnx=True)
    export_models(tmp_path / "runs/ls100", tmp_path / "models/cpc-ls100")
    rng = np.random.default_rng(0)
    for name, seconds in (("a.wav", 1.2), ("b.wav", 2.0)):
        soundfile.write(tmp_path / name, rng.uniform(-0.5, 0.5, int(16000 * seconds)), 16000)
    waves = torch.zeros(2, 32000)
    waves[0, :19200], waves[1] = torch.randn(19200), torch.randn(32000)
    return {
        "wave": np.asarray(waves[0, :19200]),
        "waves": waves,
        "lengths": torch.tensor([19200, 32000]),
    }


def _upstream_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A tiny random WavLM where the page has its local copy of WavLM BASE+."""
    from ssl_fixtures import family_configs, save_tiny_upstream

    transformers = need("transformers")
    monkeypatch.chdir(tmp_path)
    config = family_configs(transformers)["wavlm"]
    save_tiny_upstream(transformers, config, tmp_path / "models" / "wavlm-base-plus")
    return {}


_GIVEN: dict[str, Callable[[Path, pytest.MonkeyPatch], dict]] = {
    "export.md": _exported_models,
    "batching.md": _audio_files,
    "pretraining.md": _run_folder,
    "experiments.md": _recognizer_inputs,
    "ssl.md": _upstream_folder,
}


# Pages whose examples the tests below run and check further.
_CHECKED = {HUGGING_FACE, *_GIVEN, *(p for p, _, _ in TOOLKITS + SELF_CONTAINED)}


@pytest.mark.parametrize("page", sorted(set(_pages_with_examples()) - _CHECKED))
def test_every_other_page_s_examples_run(page):
    _run(page)


def test_the_checked_pages_still_have_their_examples():
    assert _CHECKED <= set(_pages_with_examples())


def test_what_the_given_pages_compute_has_the_documented_shapes(tmp_path, monkeypatch):
    (scope,) = _run("batching.md", _audio_files(tmp_path, monkeypatch))
    assert scope["batch"].shape == (3, 192000)  # pad_collate: the longest, a multiple of 160
    assert scope["lengths"].tolist() == [16000, 40000, 192000]
    assert scope["loader"].collate_fn(scope["dataset"]).shape == (2, 160000)
    (scope,) = _run("pretraining.md", _run_folder(tmp_path, monkeypatch))
    assert scope["z"].shape == (2, 100, 128) and scope["c"].shape == (2, 100, 256)
    (scope,) = _run("experiments.md", _recognizer_inputs(tmp_path, monkeypatch))
    assert scope["y"].shape == (2, 3) and scope["feats"].shape == (2, 100, 40)
    assert scope["loss"].dim() == 0 and torch.isfinite(scope["loss"])


def test_the_export_page_loads_predicts_and_runs_its_graph(tmp_path, monkeypatch):
    loaded, graph = _run("export.md", _exported_models(tmp_path, monkeypatch))
    assert loaded["y"].shape == (2, 3) and torch.isfinite(loaded["y"]).all()
    assert loaded["c"].shape == (2, 200, 16)
    assert np.isfinite([loaded["activation"], loaded["valence"], loaded["dominance"]]).all()
    # the graph's rows are what PyTorch gives each clip alone
    alone = [loaded["model"].predict(graph[name]) for name in ("a", "b")]
    got = np.stack([graph["activation"], graph["valence"], graph["dominance"]], axis=1)
    np.testing.assert_allclose(got, np.stack(alone), atol=1e-4)


@pytest.mark.huggingface
def test_the_ssl_page_s_example_fills_the_cache(tmp_path, monkeypatch):
    (scope,) = _run("ssl.md", _upstream_folder(tmp_path, monkeypatch))
    info = scope["upstream"].info
    assert scope["width"] == info.num_states * info.hidden_size and scope["frames"] > 0
    assert len(scope["features"]) == len(scope["corpus"]) and scope["cache"].complete()


# ---- the drop-in loss ---------------------------------------------------------------------


def test_the_drop_in_pages_hold_the_nine_recipes():
    pages = [HUGGING_FACE, *(f"integrations/{n}.md" for n in ("fairseq", "speechbrain"))]
    pages += ["integrations/nemo.md", "integrations/cpc_audio.md", "integrations/index.md"]
    assert sum(len(_blocks(p)) for p in pages) == 9
    assert "model(input_values" in _blocks(HUGGING_FACE)[0]
    assert "cpc_info_nce" in _blocks("integrations/cpc_audio.md")[2]
    for page, index, toolkit in TOOLKITS:
        assert f"from cpc_fast.integrations.{toolkit} import" in _blocks(page)[index]


@pytest.mark.huggingface
def test_hugging_face_recipe_gives_the_model_s_own_loss():
    model = tiny_model()
    wave, mask, _ = hf_inputs(model, seed=2)
    scope = {"model": model, "input_values": wave, "mask_time_indices": mask}
    (scope,) = _run(HUGGING_FACE, scope)
    theirs = model(wave, mask_time_indices=mask, sampled_negative_indices=scope["neg"]).loss
    torch.testing.assert_close(scope["loss"], theirs, rtol=1e-5, atol=1e-5)


def _leaves_have_finite_grads(scope: dict) -> None:
    leaves = [v for v in scope.values() if isinstance(v, torch.Tensor) and v.is_leaf]
    grads = [v.grad for v in leaves if v.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("page, index, name", SELF_CONTAINED)
def test_self_contained_recipes_run(page, index, name):
    # alone, as a reader who copies only this block runs it
    block = _blocks(page)[index]
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(block, f"{page} (python block {index})", "exec"), scope)
    loss = scope["out"].loss if name == "cpc_audio" else scope["loss"]
    assert torch.isfinite(loss)
    _leaves_have_finite_grads(scope)


@pytest.mark.parametrize("page, index, name", TOOLKITS)
def test_toolkit_recipes_run(page, index, name):
    scope = _run(page, upto=index)[index]
    # CPC_audio's criterion returns the (1, K) per-step losses; it trains on their sum
    loss = scope["all_losses"].sum() if name == "cpc_audio" else scope["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    _leaves_have_finite_grads(scope)
    accuracy = {
        "fairseq": lambda: scope["accuracy"],
        "speechbrain": lambda: scope["accuracy"],
        "cpc_audio": lambda: scope["all_acc"],
    }.get(name)
    if accuracy is not None:  # NeMo reports none
        assert ((accuracy() >= 0) & (accuracy() <= 1)).all()
