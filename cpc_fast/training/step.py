"""One CPC training step: forward, InfoNCE, backward, Adam, with the paper's optimizer and
bf16 autocast on CUDA; optionally the forward and the loss under ``torch.compile``
(``--compile``: CUDA graphs on one CUDA device, see :func:`compile_forward_loss`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.losses.config import LossConfig
from cpc_fast.losses.cpc import CPCInfoNCEOutput
from cpc_fast.losses.negatives import philox_key
from cpc_fast.training.guard import NonFiniteGuard
from cpc_fast.training.precision import autocast


def make_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.Adam:
    """Adam with the paper's settings (weight decay as an L2 term, as the paper's PyTorch)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def forward_loss(
    model: torch.nn.Module,
    wave: torch.Tensor,
    loss: LossConfig,
    seed: int | torch.Tensor | None,
    neg_index: torch.Tensor | None,
    amp_dtype: torch.dtype | None,
) -> CPCInfoNCEOutput:
    """The model on ``wave`` (B, T) and its InfoNCE: what ``--compile`` compiles."""
    with autocast(wave.device, amp_dtype):
        out = model(wave)
    return loss.cpc(out.predictions, out.z, seed=seed, neg_index=neg_index)


ForwardLoss = Callable[..., CPCInfoNCEOutput]


def compile_forward_loss(device: torch.device, processes: int = 1) -> ForwardLoss:
    """:func:`forward_loss` under ``torch.compile``. On one CUDA device with CUDA graphs
    (``mode="reduce-overhead"``: the step's many small kernels launch as one graph; the
    fused loss makes no host sync, and its Philox seed travels as a device tensor, so
    every replay draws the step's own negatives). Under several processes (DDP buckets its
    gradients with hooks a graph would freeze) and on a CPU (no CUDA graphs there): a plain
    compile (inductor's default mode), which on a CPU needs a C++ compiler."""
    graphs = device.type == "cuda" and processes == 1
    compiled = torch.compile(forward_loss, mode="reduce-overhead" if graphs else None)
    if not graphs:
        return compiled

    def step(model, wave, loss, seed, neg_index, amp_dtype) -> CPCInfoNCEOutput:
        # A new training iteration: the previous replay's outputs may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(model, wave, loss, seed, neg_index, amp_dtype)

    return step


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    wave: torch.Tensor,
    loss: LossConfig,
    *,
    seed: int | None = None,
    neg_index: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    weight: float = 1.0,
    guard: NonFiniteGuard | None = None,
    compiled: ForwardLoss | None = None,
) -> CPCInfoNCEOutput:
    """One optimizer step on ``wave`` (B, T) with the InfoNCE of ``loss``; returns the detached
    loss, per-step losses and accuracies. Negatives come from ``neg_index`` (B, K, L, N) if
    given, else from ``seed``.
    ``weight`` scales the loss (0 for a rank whose batch was entirely unreadable, so it
    still joins the gradient all-reduce). ``guard`` sees the loss and the gradients before
    the optimizer steps, and may hold the step back (:mod:`cpc_fast.training.guard`).
    ``compiled`` (from :func:`compile_forward_loss`) replaces the eager forward and loss."""
    if compiled is None:
        result = forward_loss(model, wave, loss, seed, neg_index, amp_dtype)
    else:
        if seed is not None:
            # A device tensor, filled without a sync: a Python int that changes every step
            # would be a new constant for the compiler, and a graph would replay its first.
            seed = torch.full((), philox_key(seed), dtype=torch.int64, device=wave.device)
        result = compiled(model, wave, loss, seed, neg_index, amp_dtype)
    optimizer.zero_grad(set_to_none=True)
    (result.loss * weight if weight != 1.0 else result.loss).backward()
    if guard is None or guard.observe(result.loss if weight else None, model.parameters()):
        optimizer.step()
    # Copies: a CUDA graph's outputs are overwritten by its next replay.
    keep = (lambda t: t.detach().clone()) if compiled is not None else torch.Tensor.detach
    return CPCInfoNCEOutput(*(keep(t) for t in result))


__all__ = [
    "compile_forward_loss",
    "forward_loss",
    "make_optimizer",
    "train_step",
]
