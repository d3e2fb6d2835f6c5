"""One CPC training step: forward, InfoNCE, backward, Adam, with the paper's optimizer and
bf16 autocast on CUDA."""

from __future__ import annotations

import logging

import torch

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.losses.info_nce import CPCInfoNCEOutput, cpc_info_nce
from cpc_fast.models.cpc import CPCConfig
from cpc_fast.training.guard import NonFiniteGuard
from cpc_fast.training.validate import autocast

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


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.Adam:
    """Adam with the paper's settings (weight decay as an L2 term, as the paper's PyTorch)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    wave: torch.Tensor,
    config: CPCConfig,
    *,
    seed: int | None = None,
    neg_index: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    weight: float = 1.0,
    guard: NonFiniteGuard | None = None,
) -> CPCInfoNCEOutput:
    """One optimizer step on ``wave`` (B, T); returns the detached loss, per-step losses and
    accuracies. Negatives come from ``neg_index`` (B, K, L, N) if given, else from ``seed``.
    ``weight`` scales the loss (0 for a rank whose batch was entirely unreadable, so it
    still joins the gradient all-reduce). ``guard`` sees the loss and the gradients before
    the optimizer steps, and may hold the step back (:mod:`cpc_fast.training.guard`)."""
    with autocast(wave.device, amp_dtype):
        out = model(wave)
    result = cpc_info_nce(
        out.predictions,
        out.z,
        num_negatives=config.num_negatives,
        temperature=config.temperature,
        neg_index=neg_index,
        seed=None if neg_index is not None else seed,
        exclude_positive=config.exclude_positive,
    )
    optimizer.zero_grad(set_to_none=True)
    (result.loss * weight if weight != 1.0 else result.loss).backward()
    if guard is None or guard.observe(result.loss if weight else None, model.parameters()):
        optimizer.step()
    return CPCInfoNCEOutput(*(t.detach() for t in result))


__all__ = ["autocast_dtype", "make_optimizer", "train_step"]
