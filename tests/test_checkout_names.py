"""The checkout puts no name on the import path that hides an installed package.

Wherever the repository root is on ``sys.path`` (``python`` started in the clone, pytest with
the root conftest.py), each of its folders and modules is a candidate for ``import <name>``.
The top-level ``kernels/`` folder once won over Hugging Face's ``kernels`` package, which
transformers imports to build a model. A folder must lose to an installed package of the
same name, and a module that always wins (pytest and setuptools want conftest.py and setup.py
at the root; pytest puts tests/ and bench/ first on the path) must not be the name of one.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's own package: it is meant to be imported from the checkout.
OWN = {"cpc_fast"}


def _root_folders() -> list[str]:
    return sorted(
        p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier() and p.name not in OWN
    )


def _modules_first_on_the_path() -> list[str]:
    """conftest.py and setup.py at the root, and the modules of tests/ and bench/, which
    pytest's default import mode and the benchmark plugin put first on ``sys.path``."""
    files = [*ROOT.glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]
    return sorted({p.stem for p in files})


def _python(code: str, *, cwd: Path, extra_path: Path | None = None) -> str:
    """Runs ``code`` with the repository root first on ``sys.path`` and ``extra_path`` (the
    stand-in's site) right after it, ahead of the environment's own packages."""
    prologue = f"import sys; sys.path.insert(0, {str(ROOT)!r})"
    if extra_path is not None:
        prologue += f"; sys.path.insert(1, {str(extra_path)!r})"
    done = subprocess.run(
        [sys.executable, "-c", f"{prologue}\n{code}"],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_folders_checked_include_kernels():
    assert "kernels" in _root_folders() and "tests" in _root_folders()


@pytest.mark.parametrize("name", _root_folders())
def test_an_installed_package_wins_over_the_checkout_s_folder(tmp_path, name):
    stand_in = tmp_path / "site" / name
    (stand_in / "inner").mkdir(parents=True)
    (stand_in / "__init__.py").write_text("STAND_IN = True\n")
    (stand_in / "inner" / "__init__.py").write_text("from .. import STAND_IN as FROM_PARENT\n")
    code = (
        f"import {name}, {name}.inner\n"
        f"print({name}.__file__, {name}.STAND_IN, {name}.inner.FROM_PARENT)"
    )
    for cwd in (ROOT, tmp_path):  # started in the clone, and anywhere else
        out = _python(code, cwd=cwd, extra_path=tmp_path / "site")
        assert out == f"{stand_in / '__init__.py'} True True"


def test_without_another_kernels_the_name_is_not_found():
    # Only the checkout and the standard library on the path: no Hugging Face package.
    code = (
        "sys.path[:] = [sys.path[0]] + [p for p in sys.path[1:] if p and 'packages' not in p]\n"
        "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n    print(e.name)\n"
        "print('kernels' in sys.modules)"
    )
    assert _python(code, cwd=ROOT).split() == ["kernels", "False"]


def test_the_library_still_imports_its_kernels():
    code = (
        "import cpc_fast.kernels.info_nce as k\nprint(k.__name__)\n"
        "try:\n    import kernels\nexcept ImportError:\n    kernels = None\n"
        "print(getattr(kernels, '__file__', None) != k.__file__.replace('info_nce', '__init__'))"
    )
    assert _python(code, cwd=ROOT).split() == ["cpc_fast.kernels.info_nce", "True"]


def test_a_failing_stand_in_fails_the_import_and_leaves_no_module(tmp_path):
    (tmp_path / "site" / "kernels").mkdir(parents=True)
    (tmp_path / "site" / "kernels" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    code = (
        "try:\n    import kernels\nexcept RuntimeError as e:\n    print(e)\n"
        "print('kernels' in sys.modules)"
    )
    assert _python(code, cwd=ROOT, extra_path=tmp_path / "site").split() == ["boom", "False"]


def test_no_module_first_on_the_path_is_an_installed_top_level_name():
    installed = importlib.metadata.packages_distributions()
    taken = {name: installed[name] for name in _modules_first_on_the_path() if name in installed}
    assert not taken, f"checkout modules named like installed packages: {taken}"
