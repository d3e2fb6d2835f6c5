"""Ahead-of-time compilation of every shipped kernel variant for a CUDA target, no GPU needed.

``python -m cpc_fast.kernels.aot [--arch 90] [--dims 128,64]`` compiles each kernel, for each
input dtype and for the block configuration that the launchers pick at those widths, through
Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) and prints one JSON line per
variant with its registers, spills and shared memory as reported by ``ptxas -v``. It must
run with ``TRITON_INTERPRET`` unset: the interpreter replaces ``triton.jit`` functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .info_nce import dense_config, gather_config, segment_config
from .info_nce_dense import _dense_bwd_dq_kernel, _dense_bwd_dz_kernel, _dense_fwd_kernel
from .info_nce_gather import _dk_segment_kernel, _info_nce_bwd_kernel, _info_nce_fwd_kernel
from .sampling import _materialize_negatives_kernel

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class Variant:
    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int = 1


def _sig(fn, types: dict[str, str], constexprs: dict[str, Any]) -> dict[str, str]:
    """Full signature in argument order: given pointer types, i32 ints, constexpr markers."""
    sig = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in types:
            sig[arg] = types[arg]
        elif arg == "seed":
            sig[arg] = "i64"
        elif arg == "scale":
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    return sig


def variants(dims: tuple[int, ...] = (128,), index: str = "i64") -> list[Variant]:
    """Every kernel x flag combination x dtype the launchers can produce at these widths."""
    out: list[Variant] = []
    for D in dims:
        for dt in DTYPES:
            out += _gather_variants(D, dt, index) + _dense_variants(D, dt, index)
    for exclude in (False, True):
        cx = {"EXCLUDE_POS": exclude, "BLOCK_M": 64}
        out.append(
            Variant(
                f"materialize[exclude={exclude}]",
                _materialize_negatives_kernel,
                _sig(_materialize_negatives_kernel, {"out_ptr": "*i64"}, cx),
                cx,
                4,
                1,
            )
        )
    return out


def _gather_variants(D: int, dt: str, index: str) -> list[Variant]:
    ptrs = {
        "q_ptr": f"*{dt}",
        "key_ptr": f"*{dt}",
        "pos_ptr": f"*{index}",
        "neg_ptr": f"*{index}",
        "lse_ptr": "*fp32",
        "loss_ptr": "*fp32",
        "correct_ptr": "*i8",
        "grad_ptr": "*fp32",
        "dq_ptr": f"*{dt}",
    }
    modes = [(False, False, False), (True, False, False), (True, True, False), (True, True, True)]
    out = []
    for cpc, sampled, exclude in modes:
        flags = {"CPC": cpc, "SAMPLED": sampled, "EXCLUDE_POS": exclude}
        cfg = gather_config(D)
        cx = {**flags, "BLOCK_M": cfg.BLOCK_M, "BLOCK_D": cfg.BLOCK_D}
        out.append(
            Variant(
                f"gather_fwd[{dt},D={D},{_flags(flags)}]",
                _info_nce_fwd_kernel,
                _sig(_info_nce_fwd_kernel, ptrs, cx),
                cx,
                *cfg[2:],
            )
        )
        for atomic in (True, False):
            cx = {**flags, "ATOMIC": atomic, "BLOCK_M": cfg.BLOCK_M, "BLOCK_D": cfg.BLOCK_D}
            types = {**ptrs, "dk_ptr": "*fp32" if atomic else f"*{dt}"}
            out.append(
                Variant(
                    f"gather_bwd[{dt},D={D},{_flags(flags)},atomic={atomic}]",
                    _info_nce_bwd_kernel,
                    _sig(_info_nce_bwd_kernel, types, cx),
                    cx,
                    *cfg[2:],
                )
            )
    cfg = segment_config(D)
    cx = {"BLOCK_E": cfg.BLOCK_M, "BLOCK_D": cfg.BLOCK_D}
    types = {**ptrs, "order_ptr": "*i64", "seg_ptr": "*i64", "dk_ptr": f"*{dt}"}
    out.append(
        Variant(
            f"dk_segment[{dt},D={D}]",
            _dk_segment_kernel,
            _sig(_dk_segment_kernel, types, cx),
            cx,
            *cfg[2:],
        )
    )
    return out


def _dense_variants(D: int, dt: str, index: str) -> list[Variant]:
    cfg = dense_config(D)
    ptrs = {
        "q_ptr": f"*{dt}",
        "z_ptr": f"*{dt}",
        "neg_ptr": f"*{index}",
        "lse_ptr": "*fp32",
        "loss_ptr": "*fp32",
        "correct_ptr": "*i8",
        "grad_ptr": "*fp32",
        "dq_ptr": f"*{dt}",
        "dz_ptr": f"*{dt}",
    }
    out = []
    for sampled in (False, True):
        cx = {
            "SAMPLED": sampled,
            "EXCLUDE_POS": False,
            "IEEE": dt == "fp32",
            "F32_DOT": False,
            "BLOCK_M": cfg.BLOCK_M,
            "BLOCK_F": cfg.BLOCK_F,
            "BLOCK_D": cfg.BLOCK_D,
        }
        for fn in (_dense_fwd_kernel, _dense_bwd_dq_kernel, _dense_bwd_dz_kernel):
            out.append(
                Variant(
                    f"{fn.__name__.strip('_')}[{dt},D={D},sampled={sampled}]",
                    fn,
                    _sig(fn, ptrs, cx),
                    cx,
                    *cfg[3:],
                )
            )
    return out


def _flags(flags: dict[str, bool]) -> str:
    return ",".join(k.lower() for k, v in flags.items() if v) or "explicit"


def compile_variant(v: Variant, arch: int = 90) -> dict[str, Any]:
    """Compiles one variant to cubin; returns its ptxas resource usage."""
    src = ASTSource(fn=v.fn, signature=v.signature, constexprs=v.constexprs)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dims", default="128", help="comma-separated D values")
    parser.add_argument("--index", default="i64", choices=("i64", "i32"))
    parser.add_argument("--filter", default="", help="only variants whose name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    dims = tuple(int(d) for d in args.dims.split(","))
    for v in variants(dims, args.index):
        if args.filter in v.name:
            print(json.dumps(compile_variant(v, args.arch)), flush=True)


if __name__ == "__main__":
    main()
