"""The fused kernels address tensors past element 2**31 correctly (int64 offsets).

Runs ``info_nce_large_offsets.py`` in a subprocess: with int32 offset arithmetic the kernels
would dereference a wrapped, negative address and crash, which must fail this test rather
than the whole run. Under the interpreter on CPU; compiled on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
SCRIPT = Path(__file__).with_name("info_nce_large_offsets.py")


def test_offsets_past_2_31_elements():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 6 + 12 + 9
    # fp16 inputs, fp32 accumulation: losses to ~1e-6, fp16 gradients to their rounding.
    bad = {k: v for k, v in errors.items() if not v < (1e-5 if k.endswith("loss") else 2e-3)}
    assert not bad, bad
