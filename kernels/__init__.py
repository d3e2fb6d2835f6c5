"""The Triton kernels of cpc-fast, installed as ``cpc_fast.kernels`` (pyproject's package-dir).

In a checkout this folder is also reachable as a top-level package named ``kernels`` wherever
the repository root is on ``sys.path``: a ``python`` or a notebook started in the clone, or
pytest with the root ``conftest.py``. ``kernels`` is the name of Hugging Face's kernel-hub
package, which transformers imports when it builds a model. Imported under that name, this
folder steps aside: the next ``kernels`` on the import path is loaded in its place, or the
import fails exactly as if the folder were not there. Imported as ``cpc_fast.kernels`` (the
only name the library uses), nothing happens here.
"""

if __name__ == "kernels":  # pragma: no branch - which name we were imported under

    def _step_aside() -> None:
        import importlib.machinery
        import importlib.util
        import os
        import sys

        here = os.path.realpath(__file__)
        checkout = os.path.dirname(os.path.dirname(here))
        elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != checkout]
        del sys.modules[__name__]
        for finder in sys.meta_path:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(__name__, elsewhere)
            elif hasattr(finder, "find_spec"):  # e.g. an editable install's own finder
                spec = finder.find_spec(__name__, None)
            else:
                continue
            if spec is not None and os.path.realpath(spec.origin or "") != here:
                break
        else:
            raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
        module = importlib.util.module_from_spec(spec)
        sys.modules[__name__] = module  # the import statement returns what sits here at the end
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[__name__]
            raise

    _step_aside()
