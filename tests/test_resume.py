"""Kill-and-resume for real: ``cpc-fast pretrain`` as a subprocess, SIGKILLed mid-run, run
again with the same command; it ends at the same step with the same weights as a run that
was never interrupted, and every file in the run folder loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from cpc_fast import load_cpc
from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import load_state
from cpc_fast.io.metrics import read_metrics
from cpc_fast.training.data import open_pretrain_data
from cpc_fast.training.pretrain import pretrain

STEPS = 80


def _command(out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cpc_fast",
        "pretrain",
        "--preset",
        "tiny",
        "--max-steps",
        str(STEPS),
        "--batch-size",
        "2",
        "--save-every",
        "5",
        "--log-every",
        "5",
        "--out",
        str(out),
        "--no-progress",
    ]


def _checkpoint_step(out) -> int:
    try:
        return int(load_state(out / "state.pt")["step"])
    except (FileNotFoundError, UserInputError):
        return -1


def test_sigkill_then_rerun_resumes_to_the_same_end(tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while _checkpoint_step(out) < 10 and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint at step 10 within 2 minutes"
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = _checkpoint_step(out)
    assert 10 <= killed_at < STEPS
    # Whatever the moment of the kill, every file is whole.
    load_cpc(out)
    json.loads((out / "config.json").read_text())

    rerun = subprocess.run(_command(out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    state = load_state(out / "state.pt")
    assert state["step"] == STEPS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    rows = read_metrics(out / "metrics.csv")
    train_steps = sorted(r["step"] for r in rows if r["split"] == "train" and r["name"] == "loss")
    assert train_steps == list(range(5, STEPS + 1, 5))  # each logged once, none lost

    # The same configuration trained without interruption, in this process.
    torch.set_num_threads(1)
    config = PretrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    train, valid, _ = open_pretrain_data(config.data, seed=config.seed)
    straight = pretrain(config, train, valid, tmp_path / "straight", progress=False)
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
