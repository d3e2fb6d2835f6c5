"""Shared benchmark setup: records the device, versions and exact command with every result.

pytest-benchmark stores ``machine_info`` in each JSON file; this adds the GPU (or CPU) name,
torch/triton/cpc_fast versions and the command line, so a results file says where and how
it was measured. ``bench/report.py`` turns the JSON files into markdown tables.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys

import pytest


def device_info() -> dict[str, str]:
    import torch

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "command": " ".join(
            shlex.quote(a)
            for a in [os.path.basename(sys.executable), "-m", "pytest", *sys.argv[1:]]
        ),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # the CPU benchmarks run without Triton too
        info["triton"] = "not installed"
    try:
        import cpc_fast

        info["cpc_fast"] = cpc_fast.__version__
    except Exception:
        info["cpc_fast"] = "not importable"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpu"] = "none"
    return info


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(device_info())
