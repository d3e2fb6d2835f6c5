"""A strided 1-D convolution whose kernel spans two strides (k = 2 s, as in every layer of the
CPC encoder), computed on frames laid out as (B, L, C) with one matrix product.

With k = 2 s the padded input cut into blocks of s frames is read by output t as blocks t and
t + 1, so ``y[t] = W_a x_t + W_b x_{t+1} + b``: one GEMM of the (B (n + 1), s C) blocks with
the stacked (2 out, s C) weight gives both halves, and output t adds half one of row t to
half two of row t + 1. Backward is two more GEMMs. On a CPU this is faster than oneDNN's
strided convolution, whose backward dominated a CPC training step (the tiny preset on one
thread: the encoder's forward and backward 31 ms as convolutions, 15 ms as blocks; the whole
step 68 ms, then 40 ms), and the (B, L, C) layout spares the transposes around each
per-frame norm. The result equals the convolution up to float rounding (another summation
order). ``bench/bench_encoder.py`` measures both, on a GPU too.
"""

from __future__ import annotations

import math

import torch


def conv_pads(kernel: int, stride: int) -> tuple[int, int]:
    """Samples padded (left, right) so that a layer's output length is exactly
    ``floor(input / stride)``: ``kernel - stride`` in all, the extra one on the left."""
    return math.ceil((kernel - stride) / 2), (kernel - stride) // 2


def stacked_weight(weight: torch.Tensor) -> torch.Tensor:
    """A ``Conv1d`` weight (out, C, 2 s) as the (2 out, s C) matrix of :func:`two_block_conv`:
    rows ``[:out]`` read a block's s frames through the kernel's first half, rows
    ``[out:]`` through its second; within a row, frame-major (column j C + c)."""
    out, channels, kernel = weight.shape
    stride = kernel // 2
    halves = weight.permute(0, 2, 1).reshape(out, 2, stride * channels)  # (out, 2, s C)
    return halves.transpose(0, 1).reshape(2 * out, stride * channels)


def _unstacked(grad2: torch.Tensor, out: int, channels: int, stride: int) -> torch.Tensor:
    """The inverse of :func:`stacked_weight` for a gradient: (2 out, s C) -> (out, C, 2 s),
    contiguous (DDP's gradient buckets expect the parameter's own strides)."""
    halves = grad2.view(2, out, stride, channels)  # [h, o, j, c] = W[o, c, h s + j]
    return halves.permute(1, 3, 0, 2).reshape(out, channels, 2 * stride).contiguous()


class _TwoBlockConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, stride: int, left: int):  # type: ignore[override]
        weight2 = stacked_weight(weight)
        batch, length, channels = h.shape
        out = bias.shape[0]
        n = length // stride
        width = (n + 1) * stride  # the padded frames the n outputs read
        used = min(length, width - left)  # input frames that reach an output
        padded = h.new_empty(batch, width, channels)
        padded[:, :left] = 0
        padded[:, left : left + used] = h[:, :used]
        padded[:, left + used :] = 0
        blocks = padded.view(batch * (n + 1), stride * channels)
        both = torch.addmm(torch.cat((bias, torch.zeros_like(bias))), blocks, weight2.t())
        both = both.view(batch, n + 1, 2 * out)
        ctx.save_for_backward(blocks, weight2)
        ctx.sizes = (batch, length, channels, n, used, left, stride)
        return both[:, :-1, :out] + both[:, 1:, out:]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        blocks, weight2 = ctx.saved_tensors
        batch, length, channels, n, used, left, stride = ctx.sizes
        out = grad.shape[-1]
        # The gradient of ``both``: output t's gradient on half one of row t and on half
        # two of row t + 1; nothing on the rows no output read.
        grad_both = grad.new_empty(batch, n + 1, 2 * out)
        grad_both[:, :-1, :out] = grad
        grad_both[:, -1, :out] = 0
        grad_both[:, 1:, out:] = grad
        grad_both[:, 0, out:] = 0
        grad_both = grad_both.view(batch * (n + 1), 2 * out)
        # Under autocast the forward's GEMM ran in its dtype (bf16), and so do these; autograd
        # casts the gradients back to each input's dtype.
        blocks, weight2 = blocks.to(grad.dtype), weight2.to(grad.dtype)
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_padded = (grad_both @ weight2).view(batch, (n + 1) * stride, channels)
            grad_h = grad.new_empty(batch, length, channels)
            grad_h[:, :used] = grad_padded[:, left : left + used]
            grad_h[:, used:] = 0
        if ctx.needs_input_grad[1]:
            grad_weight = _unstacked(grad_both.t() @ blocks, out, channels, stride)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1))
        return grad_h, grad_weight, grad_bias, None, None


def two_block_conv(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int
) -> torch.Tensor:
    """``Conv1d(C, out, kernel_size=2 * stride, stride=stride)`` of ``h`` (B, L, C), padded
    by :func:`conv_pads`, as (B, floor(L / stride), out). ``weight`` (out, C, 2 stride) and
    ``bias`` (out,) are the convolution's own parameters."""
    if weight.shape[2] != 2 * stride:
        raise ValueError(f"kernel {weight.shape[2]} is not twice the stride {stride}")
    left, _ = conv_pads(weight.shape[2], stride)
    return _TwoBlockConv.apply(h, weight, bias, stride, left)


__all__ = ["conv_pads", "stacked_weight", "two_block_conv"]
