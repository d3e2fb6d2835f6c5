"""Pre-training: presets, sampling, windows, the in-process loop, resume, bad items, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from typer.testing import CliRunner

from cpc_fast import load_cpc
from cpc_fast.cli import app, main
from cpc_fast.config.pretrain import PretrainConfig, paper, preset, tiny
from cpc_fast.data.corpora.synthetic_speech import SyntheticSpeechCorpus
from cpc_fast.data.samplers import EpochSampler, ShardSampler
from cpc_fast.data.windows import WindowCollate, WindowDataset
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state
from cpc_fast.io.metrics import read_metrics
from cpc_fast.losses.config import LossConfig
from cpc_fast.models import CPCConfig
from cpc_fast.training.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**changes) -> PretrainConfig:
    """The tiny preset, smaller still: 0.32-s windows of 32 frames, K = 4."""
    base = tiny()
    model = CPCConfig(encoder_dim=16, context_dim=16, prediction_steps=4, encoder_norm="channel")
    return base.replace(
        model=model,
        loss=LossConfig(num_negatives=8),
        window_seconds=0.32,
        batch_size=2,
        log_every=2,
        **changes,
    )


def _corpus(speakers: int = 3, utterances: int = 4) -> SyntheticSpeechCorpus:
    return SyntheticSpeechCorpus(speakers, utterances, seconds=(0.2, 0.6), seed=1)


class _Waves(Dataset):
    """Fixed waveforms; an entry that is an exception is raised when read."""

    def __init__(self, waves: list) -> None:
        self.waves = waves

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int) -> np.ndarray:
        wave = self.waves[index]
        if isinstance(wave, Exception):
            raise wave
        return wave


# --------------------------------------------------------------------------- presets


def test_paper_preset_is_the_paper() -> None:
    cfg = paper()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.window_seconds) == (2e-4, 1e-5, 8, 10.0)
    assert cfg.window_samples == 160000 and cfg.crop == "start"
    assert cfg.model == CPCConfig()
    assert preset("paper") == cfg


def test_tiny_preset_keeps_the_architecture() -> None:
    cfg = tiny()
    assert cfg.model.strides == (5, 4, 4, 2) and cfg.model.kernel_sizes == (10, 8, 8, 4)
    assert cfg.model.prediction_steps == 12
    assert cfg.window_samples // cfg.model.frame_hop >= cfg.model.prediction_steps + 2
    assert preset("tiny") == cfg
    with pytest.raises(UserInputError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"batch_size": 0}, "`batch_size`"),
        ({"crop": "middle"}, "`crop`"),
        ({"lr": -1.0}, "`lr`"),
        ({"window_seconds": 0.1}, "frames"),
        ({"max_steps": 0}, "`max_steps`"),
    ],
)
def test_config_errors_name_the_option(changes, match) -> None:
    with pytest.raises(UserInputError, match=match):
        tiny().replace(**changes)


def test_config_dict_round_trip() -> None:
    cfg = _config(crop="random", max_steps=7)
    again = PretrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


# --------------------------------------------------------------------------- sampling


def test_rank_blocks_make_the_single_process_batch() -> None:
    n, B, W = 23, 3, 2
    single = EpochSampler(n, B * W, seed=5)
    ranks = [EpochSampler(n, B, world_size=W, rank=r, seed=5) for r in range(W)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_position(epoch)
        one = np.array(list(single)).reshape(-1, B * W)
        per_rank = [np.array(list(r)).reshape(-1, B) for r in ranks]
        np.testing.assert_array_equal(np.concatenate(per_rank, axis=1), one)
        assert one.shape == (math.ceil(n / (B * W)), B * W)
        assert set(one.reshape(-1).tolist()) == set(range(n))  # every item each epoch
    single.set_position(0)
    first = list(single)
    single.set_position(1)
    assert list(single) != first  # reshuffled per epoch


def test_resume_mid_epoch_continues_the_order_with_any_world_size() -> None:
    n = 23
    order = EpochSampler(n, 4, seed=3).order(2)
    sampler = EpochSampler(n, 3, world_size=2, rank=1, seed=3)
    sampler.set_position(2, consumed=12)
    batches = sampler.global_batches()
    np.testing.assert_array_equal(batches.reshape(-1)[: n - 12], order[12:])
    assert batches.shape == (2, 6)
    assert list(sampler) == batches[:, 3:].reshape(-1).tolist()


def test_shard_sampler_is_disjoint_and_complete() -> None:
    shards = [list(ShardSampler(11, 2, world_size=3, rank=r)) for r in range(3)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(11)) and len(flat) == 11


# --------------------------------------------------------------------------- windows


def test_window_dataset_crops_and_sentinels() -> None:
    long = np.arange(1000, dtype=np.float32)
    data = _Waves(
        [
            long,
            np.ones(300, np.float32),
            np.ones(100, np.float32),
            UserInputError("/x/bad.flac: unreadable"),
            np.full(500, np.nan, np.float32),
            (np.arange(900) % 7).astype(np.int16),
        ]
    )
    start = WindowDataset(data, 400, crop="start", min_samples=160)
    np.testing.assert_array_equal(start[0][0], long[:400])
    assert start[1][0].shape == (300,)  # shorter: left for the collate to repeat-pad
    assert start[2] == (None, "item 2: too short: 100 samples, the minimum is 160")
    assert start[3] == (None, "item 3: /x/bad.flac: unreadable")
    assert "NaN" in start[4][1]
    assert start[5][0].dtype == np.int16 and start[5][0].shape == (400,)

    rand = WindowDataset(data, 400, crop="random", seed=7)
    offsets = set()
    for epoch in range(6):
        rand.set_epoch(epoch)
        window = rand[0][0]
        offset = int(window[0])
        np.testing.assert_array_equal(window, long[offset : offset + 400])
        np.testing.assert_array_equal(rand[0][0], window)  # deterministic per epoch
        offsets.add(offset)
    assert len(offsets) > 1
    with pytest.raises(UserInputError, match="1-D"):
        WindowDataset(_Waves([np.zeros((2, 400), np.float32)]), 400)[0]


def test_window_collate_repeat_pads_and_drops_sentinels() -> None:
    a = np.arange(1, 4, dtype=np.float32)  # repeats itself: 1 2 3 1 2 3 1 ...
    b = np.arange(10, dtype=np.float32)
    out = WindowCollate(7)([(a, None), (None, "x: bad"), (b[:7], None)])
    assert out["skipped"] == ["x: bad"]
    assert out["wave"].dtype == torch.float32 and out["wave"].shape == (2, 7)
    np.testing.assert_array_equal(out["wave"][0].numpy(), np.resize(a, 7))
    np.testing.assert_array_equal(out["wave"][1].numpy(), b[:7])
    assert WindowCollate(7)([(None, "y")])["wave"] is None


# --------------------------------------------------------------------------- the loop


def test_pretrain_in_process(tmp_path, capsys) -> None:
    train = _corpus()
    run = pretrain(_config(max_steps=8), train, train.held_out(1), tmp_path / "run", progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # quiet without progress
    for name in ("model.safetensors", "state.pt", "config.json", "metrics.csv", "summary.json"):
        assert (run / name).is_file()
    model = load_cpc(run)
    with torch.no_grad():
        assert model.context(torch.randn(1, 1600)).shape == (1, 10, 16)

    rows = read_metrics(run / "metrics.csv")
    train_rows = {(r["step"], r["name"]): r["value"] for r in rows if r["split"] == "train"}
    assert sorted({s for s, _ in train_rows}) == [2, 4, 6, 8]
    for k in range(1, 5):
        assert 0.0 <= train_rows[(8, f"accuracy_step_{k}")] <= 1.0
        assert train_rows[(8, f"loss_step_{k}")] > 0
    valid_steps = sorted({r["step"] for r in rows if r["split"] == "valid"})
    assert valid_steps == [6, 8]  # end of the 6-step epoch (12 items / 2) and the end

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8
    assert summary["epochs"] == pytest.approx(8 * 2 / 12)
    assert summary["audio_hours"] == pytest.approx(8 * 2 * 0.32 / 3600)
    state = load_state(run / "state.pt")  # weights_only=True
    assert state["step"] == 8 and state["epoch"] == 1 and state["consumed"] == 4
    config = json.loads((run / "config.json").read_text())
    assert config["train_items"] == 12 and config["config"]["max_steps"] == 8


def test_resumed_run_equals_uninterrupted_run(tmp_path) -> None:
    train = _corpus()
    cfg = _config(crop="random")
    straight = pretrain(cfg.replace(max_steps=9), train, None, tmp_path / "a", progress=False)
    pretrain(cfg.replace(max_steps=5), train, None, tmp_path / "b", progress=False)
    resumed = pretrain(cfg.replace(max_steps=9), train, None, tmp_path / "b", progress=False)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    steps = [(r["step"], r["name"]) for r in read_metrics(resumed / "metrics.csv")]
    assert len(steps) == len(set(steps))  # no row logged twice


def test_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch) -> None:
    # CPU: a plain torch.compile (inductor), no CUDA graphs; the weights after three steps
    # match the eager run's to compiler rounding.
    modes = []
    compile_ = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or compile_(fn, **kw)
    )
    torch._dynamo.reset()
    train = _corpus()
    eager = pretrain(_config(max_steps=3), train, None, tmp_path / "eager", progress=False)
    compiled = pretrain(
        _config(max_steps=3, compile=True), train, None, tmp_path / "compiled", progress=False
    )
    assert modes == [None]
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert json.loads((compiled / "config.json").read_text())["config"]["compile"] is True


@pytest.mark.parametrize(
    ("device", "processes", "mode"),
    [("cuda", 1, "reduce-overhead"), ("cuda", 2, None), ("cpu", 1, None)],
)
def test_compile_uses_cuda_graphs_on_one_cuda_device_only(device, processes, mode, monkeypatch):
    from cpc_fast.training.step import compile_forward_loss

    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or fn)
    compile_forward_loss(torch.device(device), processes)  # compiles lazily: nothing runs
    assert modes == [mode]


def test_bad_items_are_skipped_counted_or_fatal(tmp_path, caplog) -> None:
    rng = np.random.default_rng(0)
    good = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(5)]
    waves = [
        *good[:2],
        UserInputError("/data/broken.flac: unreadable (corrupt)"),
        good[2],
        np.zeros(50, np.float32),
        *good[3:],
        np.full(4000, np.inf, np.float32),
    ]
    data = _Waves(waves)  # 8 items: one epoch is 4 steps of 2
    run = pretrain(_config(max_steps=4), data, None, tmp_path / "run", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_files_reading"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("/data/broken.flac: unreadable (corrupt)" in m for m in warned)
    assert any("too short" in m for m in warned) and any("NaN or infinite" in m for m in warned)

    # The first bad item of the shuffled epoch stops the run, named in one line.
    with pytest.raises(UserInputError, match=r"(broken\.flac|too short|NaN).*`strict=False`"):
        pretrain(_config(max_steps=4, strict=True), data, None, tmp_path / "s", progress=False)


def test_other_config_in_run_folder_is_an_error_until_restart(tmp_path) -> None:
    train = _corpus()
    pretrain(_config(max_steps=2), train, None, tmp_path / "run", progress=False)
    with pytest.raises(UserInputError, match=r"different configuration \(lr\).*`restart=True`"):
        pretrain(_config(max_steps=2, lr=0.5), train, None, tmp_path / "run", progress=False)
    run = pretrain(
        _config(max_steps=2, lr=0.5), train, None, tmp_path / "run", progress=False, restart=True
    )
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.5
    assert load_state(run / "state.pt")["step"] == 2


def test_progress_output_on_rank_zero(tmp_path, capsys) -> None:
    train = _corpus()
    pretrain(_config(max_steps=3), train, train.held_out(1), tmp_path / "run", progress=True)
    out = capsys.readouterr().out
    assert "starting: 12 training utterances" in out
    assert "done: 3 steps" in out and "validation loss" in out


# --------------------------------------------------------------------------- CLI


def test_cli_pretrain_tiny(tmp_path) -> None:
    out = tmp_path / "cli"
    args = ["pretrain", "--preset", "tiny", "--max-steps", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--log-every", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["data"]["format"] == "synthetic" and config["max_steps"] == 3
    assert load_state(out / "state.pt")["step"] == 3
    assert len({r["step"] for r in read_metrics(out / "metrics.csv")}) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "bogus"], "unknown preset 'bogus'"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--crop", "middle"], "--crop must be one of start, random"),
        (["--data", "/no/such/folder"], "/no/such/folder: no such file or folder"),
        (["--format", "folder"], "--format folder needs --data PATH"),
        (["--gpus", "-1"], "--gpus must be 0 or more"),
    ],
)
def test_cli_user_mistakes_are_one_line(tmp_path, capsys, extra, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--out", str(tmp_path / "x"), "--preset", "tiny", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


@pytest.mark.parametrize(
    ("env_threads", "flags", "expected"),
    [
        (None, [], "share"),
        ("1", [], 1),
        ("1", ["--threads", "2"], 2),
        (None, ["--threads", "0"], 0),
    ],
)
def test_pretrain_on_a_cpu_takes_its_share_of_the_cores_and_says_so_first(
    tmp_path, capsys, monkeypatch, env_threads, flags, expected
) -> None:
    """One CPU process: every core it may use (not torch's count of the machine's), unless
    OMP_NUM_THREADS or --threads says otherwise (0: torch's default); its first line says it."""
    from cpc_fast.cli import pretrain as command
    from cpc_fast.io.cpus import available_cpus

    if env_threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env_threads)
    seen: list[int] = []
    monkeypatch.setattr(
        command, "run_pretrain", lambda *a, **k: seen.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "pretrain",
                    "--out",
                    str(tmp_path / "x"),
                    "--preset",
                    "tiny",
                    "--gpus",
                    "0",
                    *flags,
                ]
            )
    finally:
        torch.set_num_threads(before)
    assert exit_info.value.code == 0
    cores = available_cpus()
    threads = {"share": cores, 0: before}.get(expected, expected)
    assert seen == [threads]
    first = capsys.readouterr().err.splitlines()[0]
    words = "torch's default threads" if expected == 0 else f"{threads} thread"
    assert first.startswith("pretrain: 1 CPU process x ") and words in first, first
    assert first.endswith(f"({cores} core{'s' if cores > 1 else ''} here)"), first
