"""What this installation can do: versions, the native extension, the fused GPU path.

``cpc-fast info`` prints :func:`collect_info`; tests and bug reports use the same dict.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

import numpy as np
import torch

from cpc_fast import __version__
from cpc_fast.data import batching
from cpc_fast.losses import info_nce  # the module (cpc_fast.info_nce is the function)


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except Exception:  # a broken optional install must not break the report
        return None
    return getattr(module, "__version__", "unknown")


def _distribution_version(name: str) -> str | None:
    """The installed version of an optional extra, read without importing it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, Any]:
    """Returns a flat, JSON-serialisable description of the environment."""
    fused_ok, fused_reason = info_nce.fused_status()
    return {
        "cpc_fast": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": np.__version__,
        "soundfile": _version("soundfile"),
        "transformers": _distribution_version("transformers"),
        "tensorboard": _distribution_version("tensorboard"),
        "submitit": _distribution_version("submitit"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "native_extension_built": batching.extension_available(),
        "batching_backend": batching.active_backend(),
        "batching_backend_reason": batching.backend_reason(),
        "fused_loss_available": fused_ok,
        "fused_loss_reason": fused_reason,
        "loss_backend_default": info_nce.default_backend_name(),
        "executable": sys.executable,
    }
