"""Every kernel variant the launchers launch compiles ahead of time for Hopper (sm_90).

The interpreter accepts code the compiler rejects (and the reverse), so the interpreted
correctness tests alone do not prove the kernels build. ``cpc_fast.kernels.aot`` records the
launchers' real launches (paper shape, and an edge shape where K, N and the seed are 1,
which Triton compiles as constants), in every mode (cosine similarity, negatives masked by
index or value, ties counted, whole-batch keys), and compiles them with Triton's own
specialisation. The compile runs once per session in a subprocess with ``TRITON_INTERPRET``
unset (the interpreter replaces ``triton.jit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from optional_deps import need

KERNELS = (
    "gather_fwd",
    "gather_bwd",
    "dk_segment",
    "dense_fwd_kernel",
    "dense_bwd_dq_kernel",
    "dense_bwd_dz_kernel",
)


@pytest.fixture(scope="session")
def sm90_build() -> list[dict]:
    need("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "cpc_fast.kernels.aot", "--arch", "90"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"sm_90 compile failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm90_in_every_dtype(sm90_build):
    names = [r["name"] for r in sm90_build]
    assert len(names) == len(set(names))
    for kernel in KERNELS:
        for dtype in ("fp32", "bf16", "fp16"):
            assert any(n.startswith(f"{kernel}[{dtype},") for n in names), (kernel, dtype)
    for path in ("philox", "philox-exclude"):
        assert f"materialize[i64,{path},D=128]" in names
    # The modes of the drop-in loss: wav2vec 2.0's cosine + value masking, index masking with
    # ties counted, CPC_audio's whole-batch keys; atomic and deterministic backward.
    for path in ("general-cosine-value", "general-index-tie", "cpc-batch-tie"):
        for kernel in ("gather_fwd", "gather_bwd", "dk_segment"):
            assert any(n.startswith(f"{kernel}[fp32,{path},") for n in names), (kernel, path)
    # Launch-time specialisation as on a GPU: K = N = seed = 1 became constants.
    edge = [n for n in names if n.endswith(",edge]")]
    assert {n.split("[")[0] for n in edge} == {*KERNELS, "materialize"}
    assert all(r["registers"] > 0 for r in sm90_build)


def test_default_gather_kernels_do_not_spill(sm90_build):
    # A few bytes of spill stay in L1; kilobytes (64 rows per 4 warps did that) cost bandwidth.
    spilled = [
        (r["name"], r["spill_stores"])
        for r in sm90_build
        if r["name"].startswith(("gather_", "dk_segment", "materialize")) and r["spill_stores"] > 64
    ]
    assert not spilled
