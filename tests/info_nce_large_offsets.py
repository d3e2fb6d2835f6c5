"""Fused InfoNCE on tensors whose element offsets pass 2**31: a script, run by
``test_info_nce_large_offsets.py`` in a subprocess (a wild pointer would crash the process).

Compiled Triton (and the interpreter alike) computes ``program_id * stride`` in int32; an
offset past 2**31 wraps to a negative address. A real GPU hits this with, e.g., the general
``info_nce`` over 10**7 keys of D = 256, or a CPC batch whose predictions exceed 2**31
elements. Here the offsets come from huge strides over mostly untouched virtual memory
(``torch.empty`` never writes it), so only a few pages are ever backed. Prints one JSON line
of maximum errors against a float64 computation of the same rows.
"""

from __future__ import annotations

import json
import os
import sys

import torch

if not torch.cuda.is_available():  # as tests/conftest.py: compiled kernels on a GPU
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))

from info_nce_oracle import oracle_cpc, oracle_rows  # noqa: E402

from cpc_fast.losses import cpc_info_nce, philox_negatives  # noqa: E402
from cpc_fast.losses.info_nce import info_nce  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HUGE = 2**31


def _fill(x: torch.Tensor, g: torch.Generator) -> None:
    x.copy_(torch.randn(x.shape, generator=g).to(x.dtype))


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def general_keys_past_2_31() -> dict[str, float]:
    """keys (5, 16) with a row stride of 2**29 + 16: key row 4 starts past element 2**31."""
    g = torch.Generator().manual_seed(0)
    Nk, D, M, N = 5, 16, 6, 4
    stride = HUGE // 4 + 16
    storage = torch.empty((Nk - 1) * stride + D, dtype=torch.float16, device=DEVICE)
    keys = storage.as_strided((Nk, D), (stride, 1))
    _fill(keys, g)
    keys.requires_grad_()
    q = torch.randn(M, D, generator=g).to(DEVICE, torch.float16).requires_grad_()
    pos = torch.tensor([4, 3, 4, 0, 1, 4], device=DEVICE)
    neg = torch.randint(0, Nk, (M, N), generator=g).to(DEVICE)
    neg[:, 0] = 4
    q64 = q.detach().cpu().double().requires_grad_()
    k64 = keys.detach().cpu().double().requires_grad_()
    rows64 = oracle_rows(q64, k64, pos.cpu(), neg.cpu())[0]
    eq, ek = torch.autograd.grad(rows64.sum(), [q64, k64])
    errors = {}
    for deterministic in (False, True):
        rows = info_nce(q, keys, pos, neg, reduction="none", backend="fused",
                        deterministic=deterministic)  # fmt: skip
        gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
        name = "det" if deterministic else "atomic"
        errors[f"general-{name}-loss"] = _max_err(rows, rows64)
        errors[f"general-{name}-dq"] = _max_err(gq, eq) / eq.abs().max().item()
        errors[f"general-{name}-dk"] = _max_err(gk, ek) / ek.abs().max().item()
    return errors


def cpc_batch_past_2_31() -> dict[str, float]:
    """predictions and z with a batch stride of 2**30 + 64: sequence 2 starts past 2**31."""
    g = torch.Generator().manual_seed(1)
    B, K, L, D, N = 3, 2, 7, 16, 3
    stride = HUGE // 2 + 64
    storage = torch.empty((B - 1) * stride + (K + 1) * L * D, dtype=torch.float16, device=DEVICE)
    pred = storage.as_strided((B, K, L, D), (stride, L * D, D, 1))
    z = storage.as_strided((B, L, D), (stride, D, 1), K * L * D)
    for b in range(B):
        _fill(pred[b], g)
        _fill(z[b], g)
    pred.requires_grad_()
    z.requires_grad_()
    neg = philox_negatives(5, B, K, L, N, device=DEVICE)
    p64 = pred.detach().cpu().double().requires_grad_()
    z64 = z.detach().cpu().double().requires_grad_()
    loss64 = oracle_cpc(p64, z64, neg.cpu())[0]
    ep, ez = torch.autograd.grad(loss64, [p64, z64])
    errors = {}
    designs = {
        "gather": {"design": "gather", "neg_index": neg},
        "gather-det": {"design": "gather", "neg_index": neg, "deterministic": True},
        "philox": {"design": "philox", "seed": 5, "num_negatives": N},
        "dense": {"design": "dense", "neg_index": neg},
    }
    for name, kwargs in designs.items():
        out = cpc_info_nce(pred, z, backend="fused", **kwargs)
        gp, gz = torch.autograd.grad(out.loss, [pred, z])
        errors[f"cpc-{name}-loss"] = _max_err(out.loss, loss64)
        errors[f"cpc-{name}-dpred"] = _max_err(gp, ep) / ep.abs().max().item()
        errors[f"cpc-{name}-dz"] = _max_err(gz, ez) / ez.abs().max().item()
    return errors


def column_major_queries_past_2_31() -> dict[str, float]:
    """Queries whose D axis has a stride of 2**28 + 16 (a column-major layout of a huge
    tensor): column 8 starts past element 2**31, so offs_d * stride_d must be int64."""
    g = torch.Generator().manual_seed(2)
    M, D, Nk, N = 6, 9, 5, 4
    stride = HUGE // 8 + 16
    storage = torch.empty((D - 1) * stride + M, dtype=torch.float16, device=DEVICE)
    q = storage.as_strided((M, D), (1, stride))
    _fill(q, g)
    q.requires_grad_()
    keys = torch.randn(Nk, D, generator=g).to(DEVICE, torch.float16).requires_grad_()
    pos = torch.randint(0, Nk, (M,), generator=g).to(DEVICE)
    neg = torch.randint(0, Nk, (M, N), generator=g).to(DEVICE)
    q64 = q.detach().cpu().double().requires_grad_()
    k64 = keys.detach().cpu().double().requires_grad_()
    rows64 = oracle_rows(q64, k64, pos.cpu(), neg.cpu())[0]
    eq, ek = torch.autograd.grad(rows64.sum(), [q64, k64])
    errors = {}
    for deterministic in (False, True):
        rows = info_nce(q, keys, pos, neg, reduction="none", backend="fused",
                        deterministic=deterministic)  # fmt: skip
        gq, gk = torch.autograd.grad(rows.sum(), [q, keys])
        name = "det" if deterministic else "atomic"
        errors[f"columns-{name}-loss"] = _max_err(rows, rows64)
        errors[f"columns-{name}-dq"] = _max_err(gq, eq) / eq.abs().max().item()
        errors[f"columns-{name}-dk"] = _max_err(gk, ek) / ek.abs().max().item()
    # The dense design reads the predictions through the same kind of offsets.
    B, K, L = 2, 2, 7
    storage = torch.empty((D - 1) * stride + B * K * L, dtype=torch.float16, device=DEVICE)
    pred = storage.as_strided((B, K, L, D), (K * L, L, 1, stride))
    _fill(pred, g)
    pred.requires_grad_()
    z = torch.randn(B, L, D, generator=g).to(DEVICE, torch.float16).requires_grad_()
    negs = philox_negatives(7, B, K, L, N, device=DEVICE)
    p64 = pred.detach().cpu().double().requires_grad_()
    z64 = z.detach().cpu().double().requires_grad_()
    loss64 = oracle_cpc(p64, z64, negs.cpu())[0]
    ep, ez = torch.autograd.grad(loss64, [p64, z64])
    out = cpc_info_nce(pred, z, neg_index=negs, backend="fused", design="dense")
    gp, gz = torch.autograd.grad(out.loss, [pred, z])
    errors["columns-dense-loss"] = _max_err(out.loss, loss64)
    errors["columns-dense-dpred"] = _max_err(gp, ep) / ep.abs().max().item()
    errors["columns-dense-dz"] = _max_err(gz, ez) / ez.abs().max().item()
    return errors


if __name__ == "__main__":
    result = {
        **general_keys_past_2_31(),
        **cpc_batch_past_2_31(),
        **column_major_queries_past_2_31(),
    }
    print(json.dumps(result))
