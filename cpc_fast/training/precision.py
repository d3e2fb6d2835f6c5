"""Mixed precision: bf16 autocast on CUDA where the run asks for it or the GPU supports it."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from cpc_fast.config.pretrain import PretrainConfig

logger = logging.getLogger(__name__)


def autocast_dtype(config: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 on CUDA when ``config.bf16`` is True, or None and the GPU supports it."""
    if device.type != "cuda":
        if config.bf16:
            logger.info("bf16 autocast is for CUDA; training in float32 on %s", device)
        return None
    if config.bf16 is None:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if config.bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device`` when it is set, else no autocast."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["autocast", "autocast_dtype"]
