"""Benchmark: the paper's protocol at the demo's size, scheduled three ways (units per minute).

One round = one ``cpc-fast experiment`` launch (a real subprocess, a fresh folder and feature
cache) of the demo's experiment with one run: 4 setups x 5 folds = 20 units plus their
preparations (the LFBE and preCPC caches, the 5 miniCPC pre-trainings), tiny preset:

  one process      one worker, one thread per unit (the baseline)
  2 workers        ``--cpu-processes 2``: two workers, whole units each, one thread each
  ddp 2            ``--cpu-processes 2 --ddp``: every unit trained by both processes (DDP
                   over gloo), as ``--cpu-processes 2`` did before units were scheduled

Columns: ``units/min`` = 20 / the launch's wall time. The preCPC is a freshly initialised
tiny CPC (its weights do not change the work). On a GPU machine the suite runs on the CPU
too (the units' own timing on a GPU is the GPU check's). One round each: a round takes
minutes.

    pytest --benchmark -k protocol
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _harness import Case, cpu_cores, show

PROVIDERS = {
    "one process": [],
    "2 workers": ["--cpu-processes", "2"],
    "ddp 2": ["--cpu-processes", "2", "--ddp"],
}
UNITS = 4 * 5  # setups x folds, one run


def _experiment(out: Path, pretrained: Path, extra: list[str], smoke: bool) -> None:
    cmd = [sys.executable, "-m", "cpc_fast", "experiment", "--dataset", "synthetic"]
    cmd += ["--preset", "tiny", "--setups", "sup,joint,mini,pre", "--runs", "1"]
    cmd += ["--pretrained", str(pretrained), "--out", str(out), "--quiet", *extra]
    if smoke:  # --benchmark-disable: the plumbing on one fold for one epoch
        cmd += ["--folds", "1", "--epochs", "1", "--mini-epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_protocol(benchmark, tmp_path, provider):
    case = Case(
        "experiment protocol (demo size, 1 run)",
        provider,
        "one process",
        "4 setups x 5 folds, tiny",
        device="cpu",
    )
    if PROVIDERS[provider] and cpu_cores() < 2:
        case.skip("two worker processes need two CPU cores")
    from cpc_fast.config import pretrain
    from cpc_fast.models import save_cpc
    from cpc_fast.models.cpc import CPCModel

    pretrained = tmp_path / "cpc"
    pretrained.mkdir()
    save_cpc(CPCModel(pretrain.tiny().model), pretrained / "model.safetensors")
    benchmark.group = case.group
    benchmark.extra_info.update(case.record())
    rounds = iter(range(1_000))

    def fresh() -> tuple[tuple, dict]:
        return (tmp_path / f"exp{next(rounds)}",), {}

    def run(out: Path) -> None:
        _experiment(out, pretrained, PROVIDERS[provider], smoke=benchmark.disabled)

    start = time.perf_counter()
    benchmark.pedantic(run, setup=fresh, rounds=1, iterations=1)
    if benchmark.disabled:
        return
    seconds = time.perf_counter() - start
    benchmark.extra_info.update(median_ms=round(seconds * 1e3, 1), timer="host")
    show(benchmark, **{"units/min": f"{UNITS / seconds * 60:.1f}"})
