"""Makes a bare checkout importable as ``pip install -e .`` would: ``kernels/`` as
``cpc_fast.kernels`` (pyproject's package-dir). bench/gpu_check.py puts this folder and the
checkout on PYTHONPATH when the package is not installed, so every Python process it starts
(and those they start, such as the tests' subprocesses) sees the same package. A
sitecustomize module that this one shadows still runs.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_KERNELS = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "kernels")


class _KernelsFinder:
    """Finds ``cpc_fast.kernels`` in the checkout's kernels/ folder, and nothing else."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "cpc_fast.kernels":
            return None
        init = os.path.join(_KERNELS, "__init__.py")
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[_KERNELS]
        )


def _run_shadowed_sitecustomize() -> None:
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != _HERE and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


sys.meta_path.append(_KernelsFinder)
_run_shadowed_sitecustomize()
