"""Autograd Functions over the Triton kernels (``cpc_fast.kernels``): per-row InfoNCE.

Both Functions map (queries, keys) to per-row losses (B, K, L) fp32 and a non-differentiable
correctness mask; reductions happen outside in plain PyTorch, so autograd hands backward the
per-row gradient whatever the reduction was.

- Autocast: wrapped with ``torch.amp.custom_fwd/custom_bwd(device_type="cuda")`` without
  ``cast_inputs``. The kernels read fp32, bf16 or fp16 as given and always accumulate scores,
  logsumexp and gradients in fp32, so casting inputs up would only double the bytes the
  kernels gather; backward runs under the same autocast state as forward.
- Index tensors are saved with ``save_for_backward`` like the inputs, so changing them in
  place between forward and backward is an autograd error, not a gradient for other indices.
- No double backward: the kernels have no derivative of their own. With ``create_graph=True``
  the gradients come back marked so that differentiating them again (gradient penalties,
  Hessian-vector products) raises, instead of silently dropping this loss's second-order
  term. (``once_differentiable`` is not enough: it only reacts to an upstream gradient that
  requires grad, and the upstream gradient of a loss is a constant.)
- Gradients are computed only for the inputs that need them (``ctx.needs_input_grad``): with
  frozen keys (a target network) no d_keys atomics or sort run at all.
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

_NO_DOUBLE_BACKWARD = (
    "the fused InfoNCE has no double backward (its backward is a Triton kernel); use "
    "backend='reference' for second-order gradients"
)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a gradient, tied to the inputs it depends on; its backward raises."""

    @staticmethod
    def forward(ctx, grad, *inputs):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_NO_DOUBLE_BACKWARD)


def _first_order(grads, inputs):
    """Marks the gradients when backward builds a graph (create_graph=True)."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
        return grads
    return tuple(None if g is None else _FirstOrderOnly.apply(g, *inputs) for g in grads)


def _save(ctx, q, keys, lse, cand: Candidates) -> None:
    ctx.save_for_backward(q, keys, lse, cand.pos, cand.neg)
    ctx.cand = cand._replace(pos=None, neg=None)  # tensors travel through saved_tensors


def _restore(ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Candidates]:
    q, keys, lse, pos, neg = ctx.saved_tensors
    return q, keys, lse, ctx.cand._replace(pos=pos, neg=neg)


class GatherInfoNCE(torch.autograd.Function):
    """Designs (a) and (b): q (B, K, L, D), keys (B, Lk, D) -> loss, correct (B, K, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, keys, cand: Candidates, scale: float, deterministic: bool):
        loss, correct, lse = gather_forward(q, keys, cand, scale)
        _save(ctx, q, keys, lse, cand)
        ctx.scale, ctx.deterministic = scale, deterministic
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, _grad_correct):
        q, keys, lse, cand = _restore(ctx)
        need_dq, need_dk = ctx.needs_input_grad[:2]
        with torch.no_grad():
            dq, dk = gather_backward(
                q,
                keys,
                cand,
                ctx.scale,
                lse,
                grad_loss.float().contiguous(),
                ctx.deterministic,
                need_dk=need_dk,
            )
        dq, dk = _first_order((dq if need_dq else None, dk), (q, keys))
        return dq, dk, None, None, None


class DenseCPCInfoNCE(torch.autograd.Function):
    """Design (c): predictions (B, K, L, D), z (B, L, D) -> loss, correct (B, K, L)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, z, cand: Candidates, scale: float):
        loss, correct, lse = dense_forward(q, z, cand, scale)
        _save(ctx, q, z, lse, cand)
        ctx.scale = scale
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_loss, _grad_correct):
        q, z, lse, cand = _restore(ctx)
        need_dq, need_dz = ctx.needs_input_grad[:2]
        with torch.no_grad():
            dq, dz = dense_backward(
                q, z, cand, ctx.scale, lse, grad_loss.float().contiguous(), need_dq, need_dz
            )
        dq, dz = _first_order((dq, dz), (q, z))
        return dq, dz, None, None
