"""Atomic files: written to a temporary name in the same folder, then moved into place.

A crash, even SIGKILL, leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpc_fast.errors import UserInputError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` then renames the temporary file over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON."""

    def _write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")

    atomic_write(path, _write)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: not a readable JSON file ({exc})") from exc


__all__ = ["atomic_write", "read_json", "write_json"]
