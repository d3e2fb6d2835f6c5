"""Distributed training on the CPU (gloo): two processes equal one on the whole batch, and
``cpc-fast pretrain --cpu-processes 2`` launches two workers that train one run together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cpc_fast.cli import launch
from cpc_fast.config.pretrain import tiny
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state
from cpc_fast.io.metrics import read_metrics
from cpc_fast.losses.config import LossConfig
from cpc_fast.losses.info_nce import sample_negatives
from cpc_fast.models import CPCConfig, CPCModel
from cpc_fast.training import distributed
from cpc_fast.training.distributed import wrap_ddp
from cpc_fast.training.step import make_optimizer, train_step

MODEL = CPCConfig(encoder_dim=16, context_dim=16, prediction_steps=4)
LOSS = LossConfig(num_negatives=8)
WORLD, PER_RANK, SAMPLES = 2, 2, 3200  # 20 frames per sequence


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(model: torch.nn.Module, wave, neg_index) -> dict[str, torch.Tensor]:
    """Parameters and gradients after one training step with fixed negatives."""
    optimizer = make_optimizer(model, tiny())
    train_step(model, optimizer, wave, LOSS, neg_index=neg_index)
    inner = model.module if hasattr(model, "module") else model
    out = {f"param.{k}": v.detach().clone() for k, v in inner.named_parameters()}
    out.update({f"grad.{k}": v.grad.detach().clone() for k, v in inner.named_parameters()})
    return out


def _worker(rank: int, port: int, folder: str, init, wave, neg_index) -> None:
    # The environment torchrun would give each worker; init() reads it.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = distributed.init(0)
    assert env.world_size == WORLD and env.device.type == "cpu"
    model = CPCModel(MODEL)
    model.load_state_dict(init)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    result = _one_step(wrap_ddp(model, env), wave[rows], neg_index[rows])
    torch.save(result, Path(folder) / f"rank{rank}.pt")
    distributed.shutdown()


def test_two_gloo_processes_equal_one_process_on_the_whole_batch(tmp_path) -> None:
    torch.manual_seed(0)
    init = CPCModel(MODEL).state_dict()
    wave = torch.randn(WORLD * PER_RANK, SAMPLES) * 0.1
    L = SAMPLES // 160
    neg_index = sample_negatives(
        WORLD * PER_RANK, 4, L, 8, generator=torch.Generator().manual_seed(1)
    )
    mp.spawn(
        _worker, args=(_free_port(), str(tmp_path), init, wave, neg_index), nprocs=WORLD, join=True
    )
    single = CPCModel(MODEL)
    single.load_state_dict(init)
    expected = _one_step(single, wave, neg_index)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            # DDP's averaged gradient equals the whole-batch gradient (mean of equal halves).
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=key)
    moved = [k for k in expected if k.startswith("param.")]
    assert any(not torch.equal(expected[k], init[k[len("param.") :]]) for k in moved)


@pytest.mark.slow
def test_cli_cpu_processes_2_runs_two_gloo_workers_and_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cpc_fast", "pretrain", "--preset", "tiny"]
    cmd += ["--cpu-processes", "2"]
    cmd += ["--log-every", "2", "--out", str(out), "--no-progress"]
    for steps in (2, 4):  # the second run resumes: rank 0 reads state.pt and sends it
        proc = subprocess.run(
            [*cmd, "--max-steps", str(steps)], capture_output=True, text=True, timeout=240, env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "config.json").read_text())
    assert record["world_size"] == 2
    state = load_state(out / "state.pt")
    # 2 ranks x 4 windows per step: 4 steps consume 32 of the 192 synthetic utterances.
    assert state["step"] == 4 and state["consumed"] == 32 and state["world_size"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["audio_hours"] == pytest.approx(4 * 2 * 4 * 0.64 / 3600)
    losses = [r["step"] for r in read_metrics(out / "metrics.csv") if r["name"] == "loss"]
    assert sorted(losses) == [2, 2, 4, 4]  # train and validation at the end of each run


def test_needs_launch_refuses_more_processes_than_visible_gpus(monkeypatch):
    from cpc_fast.errors import UserInputError

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch.needs_launch(2) is True
    assert launch.needs_launch(1) is False
    with pytest.raises(UserInputError, match="--gpus 4 asks for more GPUs than the 2 visible"):
        launch.needs_launch(4)
    with pytest.raises(UserInputError, match="--gpus must be 0 or more"):
        launch.needs_launch(-1)
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun: never relaunch, never second-guess
    assert launch.needs_launch(4) is False


def test_needs_launch_on_a_cpu_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserInputError, match="--gpus 2: no CUDA GPU.*--cpu-processes 2"):
        launch.needs_launch(2)  # no GPU: refused, never 2 gloo workers by accident
    assert launch.needs_launch(0, cpu_processes=2) is True  # gloo CPU processes, on purpose
    assert launch.needs_launch(0) is False
