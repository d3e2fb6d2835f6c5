"""Autograd Functions over the Triton kernels (``cpc_fast.kernels``): per-row InfoNCE.

Both Functions map (queries, keys) to per-row losses (B, K, L) fp32 and a non-differentiable
correctness mask; reductions happen outside in plain PyTorch, so autograd hands backward the
per-row gradient whatever the reduction was.

Autocast: the Functions are wrapped with ``torch.amp.custom_fwd/custom_bwd(device_type=
"cuda")`` without ``cast_inputs``. The kernels read fp32, bf16 or fp16 as given and always
accumulate scores, logsumexp and gradients in fp32, so casting inputs up would only double
the bytes the kernels gather; backward runs under the same autocast state as forward.
"""

from __future__ import annotations

import torch

from cpc_fast.kernels.info_nce import (
    Candidates,
    dense_backward,
    dense_forward,
    gather_backward,
    gather_forward,
)


class GatherInfoNCE(torch.autograd.Function):
    """Designs (a) and (b): q (B, K, L, D), keys (B, Lk, D) -> loss, correct (B, K, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, keys, cand: Candidates, scale: float, deterministic: bool):
        loss, correct, lse = gather_forward(q, keys, cand, scale)
        ctx.save_for_backward(q, keys, lse)
        ctx.cand, ctx.scale, ctx.deterministic = cand, scale, deterministic
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, _grad_correct):
        q, keys, lse = ctx.saved_tensors
        dq, dk = gather_backward(
            q, keys, ctx.cand, ctx.scale, lse, grad_loss.float().contiguous(), ctx.deterministic
        )
        return dq, dk, None, None, None


class DenseCPCInfoNCE(torch.autograd.Function):
    """Design (c): predictions (B, K, L, D), z (B, L, D) -> loss, correct (B, K, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, z, cand: Candidates, scale: float):
        loss, correct, lse = dense_forward(q, z, cand, scale)
        ctx.save_for_backward(q, z, lse)
        ctx.cand, ctx.scale = cand, scale
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, _grad_correct):
        q, z, lse = ctx.saved_tensors
        dq, dz = dense_backward(q, z, ctx.cand, ctx.scale, lse, grad_loss.float().contiguous())
        return dq, dz, None, None
