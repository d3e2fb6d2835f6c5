"""The documentation stays true to the code: the API reference renders every public name,
the command lines in the pages use options that exist, and the README stays short and keeps
its set-up commands and the demo's results.

The site itself is built by ``mkdocs build --strict`` in ``.ci/run`` (broken links, missing
references, pages left out of the menu); the pages' Python examples run in
``test_docs_examples.py``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest
import typer

import cpc_fast
from cpc_fast.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
SET_UP = [
    'pip install torch==2.13.0 && pip install -e ".[viz]" && cpc-fast demo',
    'pip install torch==2.13.0 && pip install -e ".[dev,viz,compat,tb]" && pytest',
]
# Modules the API reference renders whole: the integrations, the batching, the configs.
WHOLE_MODULES = [
    *(f"cpc_fast.integrations.{m}" for m in ("wav2vec2", "fairseq", "speechbrain", "nemo")),
    "cpc_fast.integrations.cpc_audio",
    "cpc_fast.data.batching",
    "cpc_fast.data.collate",
    "cpc_fast.config.pretrain",
    "cpc_fast.config.experiment",
]
# Flags of other programs that the pages show (pytest, torchrun, SLURM, the bench scripts).
OTHER_TOOLS_FLAGS = {
    "--array", "--basetemp", "--benchmark", "--benchmark-compare", "--benchmark-long",
    "--benchmark-max-time", "--benchmark-min-rounds", "--extra", "--gpus-per-node", "--help",
    "--launches", "--nnodes", "--nodes", "--nproc-per-node", "--ntasks-per-node",
    "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--readme", "--wrap",
    "--requeue", "--signal", "--signals-to-handle", "--rnnMode",
    "--local-dir",  # huggingface-cli download (docs/ssl.md)
}  # fmt: skip


def _directives() -> list[str]:
    """The objects the API reference renders (``::: cpc_fast.x`` lines)."""
    names = []
    for page in sorted((DOCS / "api").glob("*.md")):
        names += re.findall(r"^::: (\S+)", page.read_text(), flags=re.M)
    return names


def _resolve(path: str) -> object:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise LookupError(path)


def _public_members(module: ModuleType) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None) or [
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    ]
    return [(n, getattr(module, n)) for n in names]


def test_every_public_name_is_in_the_api_reference():
    rendered = [_resolve(name) for name in _directives()]
    missing = [
        name
        for name in cpc_fast.__all__
        if not any(obj is getattr(cpc_fast, name) for obj in rendered)
    ]
    assert not missing, f"add `::: cpc_fast.<name>` to a page of docs/api/ for {missing}"
    assert set(WHOLE_MODULES) <= set(_directives())


def test_what_the_api_reference_renders_has_docstrings():
    undocumented = []
    for name in _directives():
        obj = _resolve(name)
        if isinstance(obj, ModuleType):
            members = [(f"{name}.{n}", v) for n, v in _public_members(obj)]
            members = [(n, v) for n, v in members if inspect.isclass(v) or callable(v)]
            undocumented += [n for n, v in members if not inspect.getdoc(v)]
        if (inspect.isclass(obj) or callable(obj) or isinstance(obj, ModuleType)) and not (
            inspect.getdoc(obj)
        ):
            undocumented.append(name)
    assert not undocumented


def _options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    return {
        name: {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for name, command in group.commands.items()
    }


def _shell_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"^```(?:bash|text)?\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_command_lines_use_options_their_command_has(page):
    options = _options()
    wrong = []
    for line in _shell_lines(page.read_text()):
        line = line.split("#")[0]
        for command, rest in re.findall(r"(?:cpc-fast|-m cpc_fast) (\w+)([^\"|;&]*)", line):
            assert command in options, f"{page.name}: no command `cpc-fast {command}`"
            flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)
            wrong += [f"cpc-fast {command} {f}" for f in flags if f not in options[command]]
    assert not wrong, f"{page.name}: {wrong}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_flags_the_prose_names_exist(page):
    known = set().union(*_options().values()) | OTHER_TOOLS_FLAGS
    text = page.read_text()
    code = re.findall(r"`([^`\n]+)`", text) + _shell_lines(text)
    flags = {f for c in code for f in re.findall(r"(?<![\w-])--[a-z][A-Za-z0-9-]*", c)}
    assert flags <= known, f"{page.name}: no such flag {sorted(flags - known)}"


def test_readme_is_short_and_keeps_the_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for command in SET_UP:
        assert f"```bash\n{command}\n```" in text
        assert command in (DOCS / "getting-started.md").read_text()


def _demo_table(text: str) -> str:
    match = re.search(r"^\| setup \| avg \| act \| val \| dom \|\n(?:\|.*\|\n)+", text, re.M)
    assert match, "no demo table"
    return match.group(0)


def test_the_demo_s_results_are_the_same_everywhere():
    committed = _demo_table((DOCS / "demo" / "results.md").read_text())
    assert _demo_table(README.read_text()) == committed
    assert _demo_table((DOCS / "getting-started.md").read_text()) == committed
