"""Builds the native extension ``cpc_fast._C`` from ``csrc/``.

Plain pybind11 over NumPy buffers: nothing links against libtorch, so ``pip install -e .``
works inside pip's isolated build environment. Sources compile in parallel (``ninja`` is
used when it is on PATH, otherwise pybind11's thread-parallel compile).

The extension is optional by default: if the compiler fails, the install still succeeds and
``cpc_fast.data.batching`` falls back to NumPy (with a warning). Set
``CPC_FAST_STRICT_BUILD=1`` to turn a build failure into an install failure (CI does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).parent.resolve()
STRICT = os.environ.get("CPC_FAST_STRICT_BUILD", "0") not in ("", "0", "false", "False")


def _sources() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))


def _compile_args() -> tuple[list[str], list[str]]:
    """Optimised, and without fused multiply-add: the kernels must match NumPy bit for bit."""
    if sys.platform == "win32":
        return ["/O2", "/fp:precise"], []
    return ["-O3", "-fvisibility=hidden", "-ffp-contract=off", "-pthread"], ["-pthread"]


def _extension() -> Pybind11Extension:
    compile_args, link_args = _compile_args()
    return Pybind11Extension(
        "cpc_fast._C",
        _sources(),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


class _BuildExt(build_ext):
    """Compiles with ninja when available; a failure is fatal only in strict mode."""

    def build_extension(self, ext) -> None:  # noqa: ANN001 - setuptools signature
        try:
            if shutil.which("ninja") and not self.force_plain_compile():
                self._build_with_ninja(ext)
            else:
                super().build_extension(ext)
        except Exception as exc:  # the toolchain may fail in many ways; decide once here
            if STRICT:
                raise
            print(
                f"WARNING: building {ext.name} failed ({exc}); cpc-fast will use its NumPy "
                "fallback. Set CPC_FAST_STRICT_BUILD=1 to make this an error.",
                file=sys.stderr,
            )

    @staticmethod
    def force_plain_compile() -> bool:
        return os.environ.get("CPC_FAST_NO_NINJA", "0") not in ("", "0")

    def _build_with_ninja(self, ext) -> None:  # noqa: ANN001
        """Writes a build.ninja for the extension's sources and links with ninja."""
        # distutils keeps the C driver in compiler_so/linker_so; C++ needs the C++ driver
        # (it links libstdc++), with the same flags.
        cxx = self.compiler.compiler_cxx[0]
        compiler = [cxx, *self.compiler.compiler_so[1:]]
        linker = [cxx, *self.compiler.linker_so[1:]]
        build_dir = Path(self.build_temp).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        includes = [f"-I{d}" for d in [*ext.include_dirs, sysconfig.get_paths()["include"]]]
        defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
        cflags = [*compiler[1:], *includes, *defines, *ext.extra_compile_args]
        objects, rules = [], []
        for src in ext.sources:
            obj = build_dir / (Path(src).stem + ".o")
            objects.append(str(obj))
            rules.append(f"build {obj}: cxx {(ROOT / src).resolve()}")
        ldflags = [*linker[1:], *ext.extra_link_args]
        ninja = "\n".join(
            [
                "ninja_required_version = 1.3",
                f"cxx = {compiler[0]}",
                f"ld = {linker[0]}",
                f"cflags = {' '.join(cflags)}",
                f"ldflags = {' '.join(ldflags)}",
                "rule cxx",
                "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
                "  depfile = $out.d",
                "  deps = gcc",
                "rule link",
                "  command = $ld $in $ldflags -o $out",
                *rules,
                f"build {target}: link {' '.join(objects)}",
                "",
            ]
        )
        (build_dir / "build.ninja").write_text(ninja)
        subprocess.run(["ninja", "-C", str(build_dir)], check=True)


ParallelCompile("CPC_FAST_BUILD_JOBS", default=0).install()

if STRICT and not _sources():
    raise SystemExit("CPC_FAST_STRICT_BUILD=1 but csrc/ holds no C++ sources")

setup(
    ext_modules=[_extension()] if _sources() else [],
    cmdclass={"build_ext": _BuildExt},
)
