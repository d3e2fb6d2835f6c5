"""The package as users get it: the built wheel, the editable install and the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from optional_deps import need

import cpc_fast

REPO = Path(__file__).resolve().parents[1]
# What a source distribution would carry; build outputs (*.so, build/) stay behind.
_SOURCES = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "csrc", "cpc_fast", "kernels"]


def _run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None):
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env=env, cwd=cwd or REPO
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_holds_the_extension_the_kernels_and_the_console_script(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info", "build")
    for name in _SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, source / name)
    env = {**os.environ, "CPC_FAST_STRICT_BUILD": "1"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        env=env,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("cpc_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    kernels = sorted(f"cpc_fast/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py"))
    assert "cpc_fast/kernels/__init__.py" in kernels
    assert set(kernels) <= set(names), set(kernels) - set(names)
    assert not any(n.startswith("kernels/") for n in names)  # only under cpc_fast/
    assert [n for n in names if n.startswith("cpc_fast/_C") and n.endswith((".so", ".pyd"))]
    for module in ("cpc_fast/data/batching.py", "cpc_fast/data/_batching_numpy.py"):
        assert module in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "cpc-fast = cpc_fast.cli:main" in text

    # Installed, the wheel's kernels are cpc_fast.kernels and never the top-level `kernels`.
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", str(site), str(wheel)])
    code = (
        "import cpc_fast.kernels.info_nce as k\nprint(k.__file__)\n"
        "try:\n    import kernels\nexcept ImportError:\n    kernels = None\n"
        "print(getattr(kernels, '__file__', None))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    ours, top_level = _run([sys.executable, "-c", code], env=env, cwd=tmp_path).stdout.split()
    assert ours == str(site / "cpc_fast" / "kernels" / "info_nce.py")
    assert not top_level.startswith(str(site))


def test_kernels_subpackage_resolves_to_the_kernels_folder(tmp_path):
    code = "import cpc_fast, cpc_fast.kernels as k; print(cpc_fast.__file__); print(k.__file__)"
    out = _run([sys.executable, "-c", code], cwd=tmp_path).stdout.splitlines()
    package, kernels = Path(out[0]).parent, Path(out[1]).parent
    if package == REPO / "cpc_fast":  # the editable install of this checkout
        assert kernels == REPO / "kernels"
    else:  # an installed wheel
        assert kernels == package / "kernels"


def _info(args: list[str], **env: str) -> dict:
    result = _run([*args, "info", "--json"], env={**os.environ, **env})
    return json.loads(result.stdout)


def test_console_script_and_module_report_the_batching_backend():
    script = Path(sysconfig.get_path("scripts")) / "cpc-fast"
    report = _info([str(script if script.exists() else shutil.which("cpc-fast"))])
    assert report["batching_backend"] == "cpp", report["batching_backend_reason"]
    assert report["native_extension_built"] is True
    assert report["cpc_fast"] == cpc_fast.__version__
    assert report["transformers"] == need("transformers").__version__
    fallback = _info([sys.executable, "-m", "cpc_fast"], CPC_FAST_DISABLE_CPP="1")
    assert fallback["batching_backend"] == "numpy"
    assert "CPC_FAST_DISABLE_CPP" in fallback["batching_backend_reason"]
