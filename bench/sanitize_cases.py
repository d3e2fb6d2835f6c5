"""One small case of every fused InfoNCE kernel, forward and backward: what the GPU check
runs under ``compute-sanitizer --tool memcheck`` (bench/gpu_check.py).

The claim under test: no kernel reads or writes outside its tensors, with bad indices too
(the ranges unchecked: ``check_indices=False``), including the trigger of the deterministic
d_keys pass's old out-of-bounds read (a bad positive with ``mask_duplicates="value"`` and
``deterministic=True``). Every variant the launchers launch is here: gather forward,
backward atomic and deterministic (with the segment pass), Philox with and without
``exclude_positive``, dense with given and drawn negatives, the modes (cosine, index and
value masking, ties, whole-batch keys) and the materialised Philox draws. Runs compiled on
a GPU, or in Triton's interpreter on a CPU (the rehearsal, ``TRITON_INTERPRET=1``), where
tests/interpreter_bounds.py stands in for the sanitizer: every load, store and atomic must
fall inside one of the launch's tensors. Prints one line per case; exits non-zero on an
exception or an access outside. The GPU check sets
``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: inside one of the caching allocator's segments an
access past a tensor would not be an error the sanitizer sees.

    compute-sanitizer --tool memcheck --error-exitcode 1 python bench/sanitize_cases.py
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from cpc_fast.losses import cpc_info_nce, philox_negatives
from cpc_fast.losses.info_nce import info_nce

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, K, L, D, N = 2, 3, 17, 24, 5


def _general(bad: bool) -> tuple[torch.Tensor, ...]:
    """queries (M, D), keys (Nk, D), pos (M,), neg (M, N); with ``bad``, positives -1, Nk
    and 2**40 and one negative Nk (read as row 0, their rows NaN)."""
    g = torch.Generator().manual_seed(0)
    M, Nk = 19, 11
    q = torch.randn(M, D, generator=g)
    keys = torch.randn(Nk, D, generator=g)
    keys[4] = keys[2]  # a duplicate by value
    pos = torch.randint(0, Nk, (M,), generator=g)
    neg = torch.randint(0, Nk, (M, N), generator=g)
    neg[0, 0], neg[1, 1] = pos[0], 4 if pos[1] == 2 else pos[1]
    pos[5] = -100  # an ignored row
    if bad:
        pos[2], pos[3], pos[6] = -1, Nk, 2**40
        neg[7, 2] = Nk
    q, keys = (t.to(DEVICE).requires_grad_() for t in (q, keys))
    return q, keys, pos.to(DEVICE), neg.to(DEVICE)


def general_cases() -> None:
    modes = [("dot", "none", False), ("cosine", "value", False), ("dot", "index", True)]
    for bad in (False, True):
        for similarity, mask, tie in modes:
            for deterministic in (False, True):
                q, keys, pos, neg = _general(bad)
                loss = info_nce(q, keys, pos, neg, reduction="sum", backend="fused",
                                similarity=similarity, mask_duplicates=mask,
                                correct_on_tie=tie, deterministic=deterministic,
                                check_indices=not bad)  # fmt: skip
                loss.backward()
                _done(f"general {similarity}/{mask}/tie={tie} det={deterministic} bad={bad}")


def cpc_cases() -> None:
    g = torch.Generator().manual_seed(1)
    neg = torch.randint(0, L, (B, K, L, N), generator=g).to(DEVICE)
    bad_neg = neg.clone()
    bad_neg[1, 2, 3, 4] = L  # one past the sequence
    shared = torch.randint(0, B * L, (B, 1, L, N), generator=g).to(DEVICE)
    cases = {
        "gather": {"design": "gather", "neg_index": neg},
        "gather bad index": {"design": "gather", "neg_index": bad_neg, "check_indices": False},
        "philox": {"design": "philox", "seed": 3},
        "philox exclude": {"design": "philox", "seed": 3, "exclude_positive": True},
        "dense": {"design": "dense", "neg_index": neg},
        "dense bad index": {"design": "dense", "neg_index": bad_neg, "check_indices": False},
        "dense philox": {"design": "dense", "seed": 3},
        "batch keys shared": {
            "neg_index": shared,
            "negatives_from": "batch",
            "correct_on_tie": True,
        },
    }
    for name, kwargs in cases.items():
        for deterministic in (False, True):
            pred = torch.randn(B, L, K, D, generator=g).permute(0, 2, 1, 3)  # the model's view
            pred = pred.to(DEVICE).requires_grad_()
            z = torch.randn(B, L, D, generator=g).to(DEVICE).requires_grad_()
            out = cpc_info_nce(pred, z, num_negatives=N, backend="fused",
                               deterministic=deterministic, **kwargs)  # fmt: skip
            out.loss.backward()
            _done(f"cpc {name} det={deterministic}")
    for exclude in (False, True):
        philox_negatives(3, B, K, L, N, device=DEVICE, exclude_positive=exclude)
        _done(f"materialised Philox draws exclude={exclude}")


def _done(name: str) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # a fault shows at this case, not at a later one
    print(f"ok: {name}", flush=True)


def main() -> int:
    watch = contextlib.nullcontext([])
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from interpreter_bounds import bounds_checked  # the interpreter's memcheck

        watch = bounds_checked()
    with watch as outside:
        general_cases()
        cpc_cases()
    for line in outside:
        print(f"OUT OF BOUNDS: {line}", flush=True)
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
