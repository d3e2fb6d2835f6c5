"""Atomic files: written to a temporary name in the same folder, then moved into place.

A crash, even SIGKILL, leaves either the old file or the new one, never half of one. A
file gets the permissions the umask allows (as ``open`` would give it), and an ``OSError``
while writing (a full disk, a read-only folder) names the file it was writing.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpc_fast.errors import UserInputError


def named_os_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` naming ``path`` (same errno, so the same subclass), for errors raised by a
    write or a flush, which name no file, or that name a temporary file."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask."""
    return 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` then renames the temporary file over ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise named_os_error(exc, path) from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically writes ``data`` to ``path``."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, _write)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``): JSON has
    no NaN, and a missing number is a null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def json_text(obj: Any) -> str:
    """Indented JSON, non-finite numbers as null (never a bare NaN)."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON (non-finite numbers as null)."""
    atomic_write_bytes(path, (json_text(obj) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not a readable JSON file ({exc})") from exc


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Creates ``folder`` if needed and proves that a file can be written in it, before any
    long work; ``what`` names the argument (```out```) in the error for a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{folder}: {what} must be a folder, this is a file")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".cpc-fast-probe.", dir=folder)
    except OSError as exc:
        raise named_os_error(exc, folder) from exc
    os.close(fd)
    os.unlink(probe)
    return folder


__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "check_writable_folder",
    "file_mode",
    "folder_mode",
    "json_safe",
    "json_text",
    "named_os_error",
    "read_json",
    "write_json",
]
