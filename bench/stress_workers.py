"""Stress check: launch the multi-process experiment many times and count the launches that
fail, the workers that abort at exit, and the launches whose results are missing.

A worker process that died at exit after its work succeeded (``terminate called without an
active exception``, SIGABRT in gloo's or the store's native threads) once made one launch
in four of ``cpc-fast experiment --cpu-processes 2`` exit 1 after writing its results. Each
launch here is a fresh folder of the tiny synthetic protocol on two folds (sup, joint and
mini: the miniCPC pre-training and the raw-audio units too), one epoch each, across
``--processes`` workers:

    python bench/stress_workers.py --launches 20
    python bench/stress_workers.py --launches 20 --extra=--ddp   # DDP of each unit instead

It prints one line per launch and a total, and exits 1 if any launch failed, printed an
abort or lacks ``results.json``. Not a benchmark: nothing is timed against anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ABORT = "terminate called"


def launch_command(out: Path, processes: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "cpc_fast", "experiment", "--dataset", "synthetic"]
    cmd += ["--preset", "tiny", "--setups", "sup,joint,mini", "--folds", "1,2", "--runs", "1"]
    cmd += ["--epochs", "1", "--mini-epochs", "1", "--gpus", "0"]
    cmd += ["--cpu-processes", str(processes), "--out", str(out), "--quiet", *extra]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=20, help="How many launches.")
    parser.add_argument("--processes", type=int, default=2, help="--cpu-processes of each.")
    parser.add_argument("--extra", action="append", default=[], help="More experiment flags.")
    args = parser.parse_args(argv)
    if args.launches < 1 or args.processes < 2:
        parser.error("--launches must be at least 1 and --processes at least 2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = aborts = missing = 0
    with tempfile.TemporaryDirectory(prefix="cpc-fast-stress-") as tmp:
        for i in range(1, args.launches + 1):
            out = Path(tmp) / f"launch{i}"
            start = time.perf_counter()
            done = subprocess.run(
                launch_command(out, args.processes, args.extra),
                capture_output=True,
                text=True,
                env=env,
                timeout=1800,
            )
            seconds = time.perf_counter() - start
            printed = done.stdout + done.stderr
            n_aborts = printed.count(ABORT)
            has_results = (out / "results.json").is_file()
            failed += done.returncode != 0
            aborts += n_aborts
            missing += not has_results
            print(
                f"launch {i}: exit {done.returncode}, {n_aborts} aborts, "
                f"results.json {'written' if has_results else 'MISSING'}, {seconds:.1f} s",
                flush=True,
            )
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
    print(
        f"{args.launches} launches of --cpu-processes {args.processes} "
        f"{' '.join(args.extra)}: {failed} failed, {aborts} aborts, {missing} without results"
    )
    return 1 if failed or aborts or missing else 0


if __name__ == "__main__":
    sys.exit(main())
