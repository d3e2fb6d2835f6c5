"""Which InfoNCE backend runs: ``fused`` (the Triton kernels) or ``reference`` (plain PyTorch).

Choice: the ``backend=`` argument, else ``CPC_FAST_LOSS_BACKEND=fused|reference``, else fused
for CUDA tensors when Triton imports and reference otherwise (said once in the log). A
backend that was asked for and cannot run raises :class:`~cpc_fast.errors.UserInputError`.
The fused backend also runs on CPU tensors when asked for explicitly under
``TRITON_INTERPRET=1``, which is how CI tests the kernels.

Triton is optional (Linux x86-64 only), so the kernels and the custom ops over them
(``cpc_fast.losses._fused``) are imported here only, inside :func:`fused_ops`.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch

from cpc_fast.errors import UserInputError

logger = logging.getLogger("cpc_fast.losses.info_nce")  # the InfoNCE API's logger, as before

BACKEND_ENV = "CPC_FAST_LOSS_BACKEND"
BACKENDS = ("fused", "reference")
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_said_fallback = False


def fused_status() -> tuple[bool, str]:
    """Whether the fused kernels can run here for CUDA tensors, and why (not)."""
    ok, why = _triton_status()
    if not ok:
        return False, why
    if not torch.cuda.is_available():
        return False, "no CUDA device (the fused kernels need one; CPU uses the reference)"
    return True, "Triton and a CUDA device are available"


def default_backend_name() -> str:
    """The backend that CUDA-resident training would get: env override, else by ability."""
    forced = os.environ.get(BACKEND_ENV)
    if forced in BACKENDS:
        return forced
    return "fused" if fused_status()[0] else "reference"


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """ "fused" or "reference" for these tensors: the ``backend`` argument, else
    ``CPC_FAST_LOSS_BACKEND``, else fused when it can run (said once in the log when not).
    A backend that was asked for and cannot run raises :class:`UserInputError`."""
    global _said_fallback
    source = "`backend`"
    if backend is None and os.environ.get(BACKEND_ENV):
        backend, source = os.environ[BACKEND_ENV], BACKEND_ENV
    if backend is not None and backend not in BACKENDS:
        raise UserInputError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    ok, why = _fused_runnable(*tensors, explicit=backend == "fused")
    if ok:
        return "fused"
    if backend == "fused":
        raise UserInputError(
            f"the fused InfoNCE backend was requested ({source}) but cannot run: {why}"
        )
    # Logging inside a traced function would break the graph: compiled calls stay quiet.
    if not _said_fallback and not torch.compiler.is_compiling():
        logger.info("InfoNCE: using the reference backend (%s)", why)
        _said_fallback = True
    return "reference"


def fused_ops() -> ModuleType:
    """``cpc_fast.losses._fused``: the custom ops over the kernels (needs Triton)."""
    from cpc_fast.losses import _fused  # Triton is optional: imported only when it runs

    return _fused


def _fused_runnable(*tensors: torch.Tensor, explicit: bool) -> tuple[bool, str]:
    ok, why = _triton_status()
    if not ok:
        return False, why
    from cpc_fast.kernels.info_nce import MAX_DIM, MAX_ROWS, interpreted  # Triton: optional

    device = tensors[0].device
    if device.type != "cuda" and not (explicit and interpreted() and device.type == "cpu"):
        return False, f"tensors are on {device.type}, the fused kernels need CUDA tensors"
    for t in tensors:
        if t.dtype not in _FUSED_DTYPES:
            return False, f"{t.dtype} inputs (the fused kernels take float32/bfloat16/float16)"

    D = tensors[0].shape[-1]
    if D > MAX_DIM:
        return False, f"D={D} is wider than the kernels' {MAX_DIM}"
    rows = tensors[0].numel() // max(D, 1)
    if rows > MAX_ROWS:
        return False, f"{rows} query rows exceed the kernels' int32 row ids ({MAX_ROWS})"
    return True, "ok"


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401  (optional dependency)

        fused_ops()
    except Exception as exc:  # any broken install means "not available", with the reason
        return False, f"Triton kernels unavailable ({type(exc).__name__}: {exc})"
    return True, "ok"
