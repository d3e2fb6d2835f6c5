"""The Triton kernels (``cpc_fast.kernels``) as ``torch.library`` custom ops: per-row InfoNCE.

``cpc_fast::fused_info_nce`` maps queries (B, K, L, D) and keys to per-row losses (B, K, L)
fp32, a correctness mask and the per-row logsumexp; ``cpc_fast::fused_info_nce_backward``
computes the gradients. Each has a fake (meta) implementation, and the forward op a
registered autograd formula, so ``torch.compile`` traces through them without a graph break
(flash-attention's pattern) and ``torch.library.opcheck`` checks them. Reductions happen
outside in plain PyTorch, so autograd hands backward the per-row gradient whatever the
reduction was.

- Everything that is not a tensor travels as :class:`FusedOptions` (the launchers' own
  ``Options``, packed once by the loss; an op takes it flat and hands it on as it came).
  The path from ``cpc_fast.cpc_info_nce`` to a kernel launch is three calls: the loss
  calls the op, the op calls the launcher (``gather_forward`` or ``dense_forward``), the
  launcher launches.
- Autocast: the ops take inputs as given (no casting). The kernels read fp32, bf16 or fp16
  and always accumulate scores, logsumexp and gradients in fp32, so casting inputs up would
  only double the bytes the kernels gather.
- Index tensors are saved for backward like the inputs, so changing them in place between
  forward and backward is an autograd error, not a gradient for other indices.
- No double backward: the kernels have no derivative of their own. The backward op's
  autograd formula raises, so differentiating the gradients again (gradient penalties,
  Hessian-vector products) is an error instead of silently dropping this loss's
  second-order term.
- Gradients are computed only for the inputs that need them (``ctx.needs_input_grad``): with
  frozen keys (a target network) no d_keys atomics or sort run at all.
- Given indices are range-checked inside the op in eager mode (``check_indices``: one
  ``aminmax`` and one device sync each). In a graph ``torch.compile`` traces, the caller
  makes the check a device-side assertion in the graph and the op skips its own
  (``negatives.op_checks_indices``); while a CUDA graph is being captured eagerly, the op's
  check asserts on the device too. Either way no host read.
- No host sync otherwise: the Philox seed is a device tensor the kernels read, so the op
  can be captured in a CUDA graph (``torch.cuda.graph``, ``torch.compile(mode=
  "reduce-overhead")``), and a seed drawn on the device inside the captured region (the
  default of ``cpc_info_nce``) is drawn afresh at every replay.
"""

from __future__ import annotations

from typing import get_type_hints

import torch
from torch import Tensor

from cpc_fast.kernels.info_nce import (
    Options,
    dense_backward,
    dense_forward,
    gather_backward,
    gather_forward,
)
from cpc_fast.losses.negatives import check_candidate_ranges

_NO_DOUBLE_BACKWARD = (
    "the fused InfoNCE has no double backward (its backward is a Triton kernel); use "
    "`backend='reference'` for second-order gradients"
)


FusedOptions = Options  # how a fused call finds and scores its candidates: all but tensors


_OPTIONS = ", ".join(f"{t.__name__} {n}" for n, t in get_type_hints(FusedOptions).items())
_TENSORS = "Tensor q, Tensor keys, Tensor? pos, Tensor? neg, Tensor? seed"


def _device_seed(seed: Tensor | None, q: Tensor) -> Tensor | None:
    """The seed as the kernels read it: (1,) int64 on q's device. It stays a tensor, never
    read to the host (a sync, and a value a captured CUDA graph would replay forever)."""
    return None if seed is None else seed.to(device=q.device, dtype=torch.int64).reshape(1)


@torch.library.custom_op(
    "cpc_fast::fused_info_nce",
    mutates_args=(),
    schema=f"({_TENSORS}, {_OPTIONS}) -> (Tensor, Tensor, Tensor)",
)
def fused_info_nce(q, keys, pos, neg, seed, *options):
    """q (B, K, L, D), keys (B or 1, Lk, D) -> loss (B, K, L) fp32, correct bool, lse fp32."""
    o = FusedOptions(*options)
    if o.check_indices:
        check_candidate_ranges(pos, neg, keys.shape[1])
    seed = _device_seed(seed, q)
    if o.design == "dense":
        return dense_forward(q, keys, neg, seed, o)
    return gather_forward(q, keys, pos, neg, seed, o)


@fused_info_nce.register_fake
def _(q, keys, pos, neg, seed, *options):
    rows = q.shape[:3]
    loss = q.new_empty(rows, dtype=torch.float32)
    return loss, q.new_empty(rows, dtype=torch.bool), torch.empty_like(loss)


@torch.library.custom_op(
    "cpc_fast::fused_info_nce_backward",
    mutates_args=(),
    schema=(
        f"(Tensor grad, {_TENSORS}, Tensor lse, {_OPTIONS}, bool need_dq, bool need_dk) "
        "-> (Tensor, Tensor)"
    ),
)
def fused_info_nce_backward(grad, q, keys, pos, neg, seed, lse, *options_and_needs):
    """-> (dq like q, dk (keys' shape, contiguous)); an empty tensor for one not needed."""
    *options, need_dq, need_dk = options_and_needs
    o = FusedOptions(*options)
    seed = _device_seed(seed, q)
    if o.design == "dense":
        dq, dk = dense_backward(grad, q, keys, neg, seed, lse, o, need_dq, need_dk)
    else:
        dq, dk = gather_backward(grad, q, keys, pos, neg, seed, lse, o, need_dk)
    return _or_empty(dq, need_dq, q), _or_empty(dk, need_dk, q)


def _or_empty(grad: Tensor | None, needed: bool, like: Tensor) -> Tensor:
    return grad if needed else like.new_empty(0)


@fused_info_nce_backward.register_fake
def _(grad, q, keys, pos, neg, seed, lse, *options_and_needs):
    need_dq, need_dk = options_and_needs[-2:]
    dq = torch.empty_like(q) if need_dq else q.new_empty(0)
    return dq, keys.new_empty(keys.shape) if need_dk else q.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    q, keys, pos, neg, seed, *options = inputs
    ctx.save_for_backward(q, keys, pos, neg, seed, output[2])
    ctx.options = options


def _backward(ctx, grad_loss, _grad_correct, _grad_lse):
    q, keys, pos, neg, seed, lse = ctx.saved_tensors
    need_dq, need_dk = ctx.needs_input_grad[:2]
    dq, dk = fused_info_nce_backward(
        grad_loss.float().contiguous(),
        q,
        keys,
        pos,
        neg,
        seed,
        lse,
        *ctx.options,
        need_dq,
        need_dk,
    )
    none = (None,) * (3 + len(ctx.options))
    return (dq if need_dq else None, dk if need_dk else None, *none)


fused_info_nce.register_autograd(_backward, setup_context=_setup_context)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError(_NO_DOUBLE_BACKWARD)


fused_info_nce_backward.register_autograd(
    _refuse_double_backward, setup_context=lambda ctx, inputs, output: None
)
