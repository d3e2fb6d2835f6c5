"""Benchmark: the paper's protocol at the demo's size, scheduled several ways (units per minute).

One round = one ``cpc-fast experiment`` launch (a real subprocess, a fresh folder and feature
cache) of the demo's experiment with one run: 4 setups x 5 folds = 20 units plus their
preparations (the LFBE and preCPC caches, the 5 miniCPC pre-trainings), tiny preset. On the
CPU (group "experiment protocol"):

  one process      ``--cpu-processes 1``: one worker, one thread per unit (the baseline)
  2 workers        ``--cpu-processes 2``: two workers, whole units each, one thread each
  ddp 2            ``--cpu-processes 2 --ddp``: every unit trained by both processes (DDP
                   over gloo), as ``--cpu-processes 2`` did before units were scheduled

On one GPU (group "experiment protocol on one GPU"; folds 1-2: 8 units and 2 miniCPC
pre-trainings, so that a round fits the GPU check's budget):

  gpu, one at a time       ``--gpus 1``: one worker, one unit at a time on the GPU
  gpu, 4 sharing           ``--gpus 1 --workers-per-gpu 4``: four workers on that GPU

Columns: ``units/min`` = units / the launch's wall time. The preCPC is a freshly initialised
tiny CPC (seed 0, the same for every provider; its weights do not change the work). On a GPU
machine the CPU cases run too, except under the GPU check's deadline (``BENCH_DEADLINE``),
where they are not measured: each takes minutes, the GPU's time is for the GPU cases. One
round each: a round takes minutes.

    pytest --benchmark --benchmark-long -k protocol
    pytest --benchmark bench/bench_protocol.py         # the same: a named long suite runs

A long suite (marker ``long``): a plain ``pytest --benchmark`` leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _harness import DEADLINE_ENV, ON_GPU, Case, cpu_cores, show

PROVIDERS = {
    "one process": ["--cpu-processes", "1"],
    "2 workers": ["--cpu-processes", "2"],
    "ddp 2": ["--cpu-processes", "2", "--ddp"],
}
SHARING = 4  # workers on the one GPU
GPU_PROVIDERS = {
    "gpu, one at a time": ["--gpus", "1"],
    f"gpu, {SHARING} sharing": ["--gpus", "1", "--workers-per-gpu", str(SHARING)],
}
GPU_FOLDS = ["--folds", "1,2"]
pytestmark = pytest.mark.long  # minutes per case: opt-in (--benchmark-long)

UNITS = {"cpu": 4 * 5, "cuda": 4 * 2}  # setups x folds, one run
GPU_ROUND_S = 55.0  # a GPU round's time need (a guess for an H100: never measured yet)


def _experiment(out: Path, pretrained: Path, extra: list[str], smoke: bool) -> None:
    cmd = [sys.executable, "-m", "cpc_fast", "experiment", "--dataset", "synthetic"]
    cmd += ["--preset", "tiny", "--setups", "sup,joint,mini,pre", "--runs", "1"]
    cmd += ["--pretrained", str(pretrained), "--out", str(out), "--quiet", *extra]
    if smoke:  # --benchmark-disable: the plumbing on one fold for one epoch
        cmd += ["--folds", "1", "--epochs", "1", "--mini-epochs", "1"]
    if "--gpus" not in extra:
        cmd += ["--gpus", "0"]  # the CPU cases on the CPU, on a GPU machine too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("provider", [*PROVIDERS, *GPU_PROVIDERS])
def test_protocol(benchmark, tmp_path, provider):
    on_gpu = provider in GPU_PROVIDERS
    device = "cuda" if on_gpu and ON_GPU else "cpu"  # named in the record: a real device
    case = Case(
        "experiment protocol on one GPU (demo size, 1 run)"
        if on_gpu
        else "experiment protocol (demo size, 1 run)",
        provider,
        "gpu, one at a time" if on_gpu else "one process",
        "4 setups x 2 folds, tiny" if on_gpu else "4 setups x 5 folds, tiny",
        device=device,
        needs_s=GPU_ROUND_S,
    )
    if on_gpu and not ON_GPU:
        case.skip("no CUDA device")
    if not on_gpu and os.environ.get(DEADLINE_ENV):
        case.skip("the GPU check's budget is for the GPU cases (minutes per CPU round)")
    case.skip_past_deadline()
    if PROVIDERS.get(provider) and cpu_cores() < 2:
        case.skip("two worker processes need two CPU cores")
    from cpc_fast.config import pretrain
    from cpc_fast.models import save_cpc
    from cpc_fast.models.cpc import CPCModel

    pretrained = tmp_path / "cpc"
    pretrained.mkdir()
    torch.manual_seed(0)  # one preCPC for every provider: their units' files compare
    save_cpc(CPCModel(pretrain.tiny().model), pretrained / "model.safetensors")
    benchmark.group = case.group
    benchmark.extra_info.update(case.record())
    rounds = iter(range(1_000))
    extra = GPU_PROVIDERS[provider] + GPU_FOLDS if on_gpu else PROVIDERS[provider]

    def fresh() -> tuple[tuple, dict]:
        return (tmp_path / f"exp{next(rounds)}",), {}

    def run(out: Path) -> None:
        _experiment(out, pretrained, extra, smoke=benchmark.disabled)

    start = time.perf_counter()
    benchmark.pedantic(run, setup=fresh, rounds=1, iterations=1)
    if benchmark.disabled:
        return
    seconds = time.perf_counter() - start
    benchmark.extra_info.update(median_ms=round(seconds * 1e3, 1), timer="host")
    units = UNITS["cuda" if on_gpu else "cpu"]
    show(benchmark, **{"units/min": f"{units / seconds * 60:.1f}"})
