"""Every kernel variant the launchers launch compiles ahead of time for Hopper (sm_90).

The interpreter accepts code the compiler rejects (and the reverse), so the interpreted
correctness tests alone do not prove the kernels build. ``cpc_fast.kernels.aot`` records the
launchers' real launches (paper shape, and an edge shape where K and N are 1,
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


def _aot(*args: str) -> list[dict]:
    """``python -m cpc_fast.kernels.aot ARGS``' JSON lines (compiled, not interpreted)."""
    need("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "cpc_fast.kernels.aot", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"aot {args} failed:\n{proc.stderr[-4000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def sm90_build() -> list[dict]:
    return _aot("--arch", "90")


def test_no_kernel_specialises_on_the_seed():
    # Triton specialises integer arguments equal to 1 and multiples of 16 (and makes those
    # past 2**31 int64): a fresh seed per step as an argument would recompile the Philox
    # kernels for about one step in 16. Every launch must get the same key for any seed.
    seeds = [1, 16, 17, 2**40 + 3, 2**63 - 1]
    runs = _aot("--seeds", ",".join(map(str, seeds)))
    assert [r["seed"] for r in runs] == seeds
    keys = runs[0]["keys"]
    assert any("'SAMPLED': True" in k for k in keys)  # the Philox launches are among them
    assert all(r["keys"] == keys for r in runs[1:])


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
    # Launch-time specialisation as on a GPU: K = N = 1 became constants.
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
