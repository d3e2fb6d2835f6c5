"""Ahead-of-time compilation of every kernel variant the launchers launch, no GPU needed.

``python -m cpc_fast.kernels.aot [--arch 90] [--dims 128,64]`` runs the launchers of
``info_nce.py`` with their kernels replaced by recorders, on CPU tensors laid out as on the
GPU, and compiles each recorded launch through Triton's full pipeline (TTIR -> TTGIR -> LLVM
-> PTX -> cubin) for the target. Signatures, constants and divisibility hints come from
Triton's own launch-time specialisation of the recorded arguments, so what compiles here is
what a GPU compiles: unit strides become constants, sizes and pointers get their 16-byte
alignment, integers past 2**31 become int64. Two shapes are recorded: the paper's (B=8,
K=12, L=1000, N=50 at each D) and an edge shape where K, N and ceil(N/4) are 1, which Triton
turns into compile-time constants (and the seed is 1: it is a device tensor the kernels
read, so no value of it specialises anything). One JSON line per distinct variant gives
registers, spills and shared memory from ``ptxas -v``. ``--seeds 1,16,17`` instead prints
one JSON line per seed with the specialisation key of every launch at the paper's shape:
the lines must be equal (a seed that changes every step must never recompile). It must
run with ``TRITON_INTERPRET`` unset: the interpreter replaces ``triton.jit`` functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from . import info_nce as launchers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS = {
    "_info_nce_fwd_kernel": "gather_fwd",
    "_info_nce_bwd_kernel": "gather_bwd",
    "_dk_segment_kernel": "dk_segment",
    "_dense_fwd_kernel": "dense_fwd_kernel",
    "_dense_bwd_dq_kernel": "dense_bwd_dq_kernel",
    "_dense_bwd_dz_kernel": "dense_bwd_dz_kernel",
    "_materialize_negatives_kernel": "materialize",
}
# B only sizes the grid (strides of a size-1 batch dim are the same), so B = 1 records the
# paper shape's specialisation cheaply; except for the dense dz pass, whose steps per split
# follow from the grid's size (``dz_splits``): the dense kernels are recorded at B = 8.
PAPER = {"B": 1, "dense_B": 8, "K": 12, "L": 1000, "N": 50, "seed": 2**40 + 3}
EDGE = {"B": 2, "K": 1, "L": 40, "N": 1, "seed": 1}  # ints Triton specialises to constants


@dataclass
class Variant:
    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: dict[tuple[int, ...], list]
    num_warps: int
    num_stages: int

    def key(self) -> str:
        return repr((self.fn.__name__, self.signature, self.constexprs, self.attrs,
                     self.num_warps, self.num_stages))  # fmt: skip


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the
    call with the launch path it came from (``labels[0]``)."""

    def __init__(self, fn, calls: list, labels: list[str]) -> None:
        self.fn, self.calls, self.labels = fn, calls, labels

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs, self.labels[0]))


def _specialize(arg) -> tuple[str, Any]:
    from triton._C.libtriton import native_specialize_impl

    return native_specialize_impl(BaseBackend, arg, False, True, True)


def _variant(fn, args: tuple, kwargs: dict, label: str) -> Variant:
    """The signature, constants and attributes Triton's launcher derives from these args."""
    kwargs = dict(kwargs)
    num_warps, num_stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)
    values = dict(zip(fn.arg_names, args, strict=False)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, attr = _specialize(value)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = value
        elif isinstance(attr, str):
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    dtype = signature[fn.arg_names[0]].lstrip("*")
    mode = {True: ",atomic", False: ",det"}.get(constexprs.get("ATOMIC"), "")
    path, _, shape = label.partition("|")
    name = f"{KERNELS[fn.__name__]}[{dtype},{path}{mode},{shape}]"
    return Variant(name, fn, signature, constexprs, attrs, num_warps, num_stages)


@contextlib.contextmanager
def _recording(calls: list, labels: list[str]) -> Iterator[None]:
    saved = {name: getattr(launchers, name) for name in KERNELS}
    try:
        for name, fn in saved.items():
            setattr(launchers, name, _Recorder(fn, calls, labels))
        yield
    finally:
        for name, fn in saved.items():
            setattr(launchers, name, fn)


def _launch_all(
    D: int, dtype: torch.dtype, shape: dict[str, int], index_dtype, labels: list[str], tag: str
) -> None:
    """Calls every launcher path once: general and CPC forms, every design and mode; sets
    ``labels[0]`` to "path|tag" for the recorder."""
    B, K, L, N = shape["B"], shape["K"], shape["L"], shape["N"]
    seed = torch.full((1,), shape["seed"], dtype=torch.int64)  # as the op hands it over
    g = torch.Generator().manual_seed(0)
    q = torch.empty(B, L, K, D, dtype=dtype).permute(0, 2, 1, 3)  # the model's layout
    z = torch.empty(B, L, D, dtype=dtype)
    lse = torch.empty(B, K, L)
    grad = torch.empty(B, K, L)
    neg = torch.randint(0, L, (B, K, L, N), generator=g, dtype=index_dtype)
    Options = launchers.Options
    M = B * L
    flat = (torch.empty(M, D, dtype=dtype)[None, None], torch.empty(1, M, D, dtype=dtype))
    pos = torch.randint(0, M, (M,), generator=g, dtype=index_dtype)[None, None]
    negs = torch.randint(0, M, (M, N), generator=g, dtype=index_dtype)[None, None]
    general = (pos, negs, None)  # (positives, negatives, seed)
    # CPC_audio: negatives from the whole batch (keys (1, B·L, D)), shared by the K steps.
    shared = torch.randint(0, B * L, (B, 1, L, N), generator=g, dtype=index_dtype)
    paths = {  # path -> ((queries, keys), (pos, neg, seed), options)
        "general": (flat, general, Options(N, 1.0)),
        "cpc": ((q, z), (None, neg, None), Options(N, 1.0)),
        "philox": ((q, z), (None, None, seed), Options(N, 1.0)),
        "philox-exclude": ((q, z), (None, None, seed), Options(N, 1.0, exclude_positive=True)),
        # wav2vec 2.0: cosine similarity, negatives equal to the positive masked by value.
        "general-cosine-value": (flat, general, Options(N, 1.0, cosine=True, mask="value")),
        "general-index-tie": (flat, general, Options(N, 1.0, mask="index", correct_on_tie=True)),
        "cpc-batch-tie": (
            (q, z.reshape(1, B * L, D)),
            (None, shared.expand(B, K, L, N), None),
            Options(N, 1.0, seq_len=L, batch_keys=True, correct_on_tie=True),
        ),
    }
    for path, ((qq, keys), tensors, o) in paths.items():
        labels[0] = f"{path}|{tag}"
        launchers.gather_forward(qq, keys, *tensors, o)
        grads = grad[:1, :1, :M] if tensors[0] is not None else grad
        lses = lse[:1, :1, :M] if tensors[0] is not None else lse
        for deterministic in (False, True):
            o = o._replace(deterministic=deterministic)
            launchers.gather_backward(grads, qq, keys, *tensors, lses, o)
    Bd = shape.get("dense_B", B)
    qd = torch.empty(Bd, L, K, D, dtype=dtype).permute(0, 2, 1, 3)
    zd, rows = torch.empty(Bd, L, D, dtype=dtype), torch.empty(Bd, K, L)
    negd = torch.randint(0, L, (Bd, K, L, N), generator=g, dtype=index_dtype)
    for path, (nd, sd) in (("dense", (negd, None)), ("dense-philox", (None, seed))):
        labels[0] = f"{path}|{tag}"
        o = Options(N, 1.0, design="dense")
        launchers.dense_forward(qd, zd, nd, sd, o)
        launchers.dense_backward(rows, qd, zd, nd, sd, rows, o)
    for path, exclude in (("philox", False), ("philox-exclude", True)):
        labels[0] = f"{path}|{tag}"
        launchers.materialize_negatives(seed, B, K, L, N, torch.device("cpu"), exclude)


def variants(dims: tuple[int, ...] = (128,), index: str = "i64") -> list[Variant]:
    """Every distinct kernel specialisation the launchers produce at these widths."""
    calls: list = []
    labels = [""]
    index_dtype = torch.int64 if index == "i64" else torch.int32
    with _recording(calls, labels):
        for D in dims:
            for dtype in DTYPES.values():
                _launch_all(D, dtype, PAPER, index_dtype, labels, f"D={D}")
            _launch_all(D, torch.float32, EDGE, index_dtype, labels, f"D={D},edge")
    out: dict[str, Variant] = {}
    seen: set[str] = set()
    for fn, args, kwargs, label in calls:
        v = _variant(fn, args, kwargs, label)
        if v.key() in seen:
            continue
        seen.add(v.key())
        base, n = v.name, 1
        while v.name in out:
            n += 1
            v.name = f"{base[:-1]},#{n}]"
        out[v.name] = v
    return list(out.values())


def seed_keys(seed: int, D: int = 128) -> list[str]:
    """The specialisation key of every launch at the paper's shape with this seed, in launch
    order (fp32): equal for every seed when no kernel specialises on it."""
    calls: list = []
    labels = [""]
    with _recording(calls, labels):
        _launch_all(D, torch.float32, PAPER | {"seed": seed}, torch.int64, labels, f"D={D}")
    return [_variant(fn, args, kwargs, label).key() for fn, args, kwargs, label in calls]


def compile_variant(v: Variant, arch: int = 90) -> dict[str, Any]:
    """Compiles one variant to cubin; returns its ptxas resource usage."""
    src = ASTSource(fn=v.fn, signature=v.signature, constexprs=v.constexprs, attrs=v.attrs)
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": v.num_warps, "num_stages": v.num_stages},
    )
    if not kernel.asm.get("cubin"):
        raise RuntimeError(f"{v.name}: no cubin produced")
    return {
        "name": v.name,
        "arch": f"sm_{arch}",
        "num_warps": v.num_warps,
        **_ptxas_usage(kernel.asm["ptx"], arch),
    }


def _ptxas_usage(ptx: str, arch: int) -> dict[str, int]:
    from triton.backends.nvidia import compiler as nvidia

    try:  # Triton >= 3.7 picks the ptxas build per architecture
        ptxas = nvidia.get_ptxas(arch)
    except TypeError:
        ptxas = nvidia.get_ptxas()
    ptxas = ptxas.path if hasattr(ptxas, "path") else ptxas[0]
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    log = res.stderr + res.stdout

    def grab(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "shared_bytes": grab(r"(\d+) bytes smem"),
    }


_JOBS: list[Variant] = []  # inherited by forked workers


def _compile_job(job: tuple[int, int]) -> dict[str, Any]:
    i, arch = job
    return compile_variant(_JOBS[i], arch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dims", default="128", help="comma-separated D values")
    parser.add_argument("--index", default="i64", choices=("i64", "i32"))
    parser.add_argument("--filter", default="", help="only variants whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", default="", help="print the launch keys for these seeds")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    if args.seeds:
        for seed in args.seeds.split(","):
            print(json.dumps({"seed": int(seed), "keys": seed_keys(int(seed))}), flush=True)
        return
    dims = tuple(int(d) for d in args.dims.split(","))
    _JOBS[:] = [v for v in variants(dims, args.index) if args.filter in v.name]
    jobs = [(i, args.arch) for i in range(len(_JOBS))]
    if args.jobs <= 1:
        results = list(map(_compile_job, jobs))
    else:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_compile_job, jobs, chunksize=1)
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
