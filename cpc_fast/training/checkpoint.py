"""Checkpoint files: atomic writes, safetensors weights with their config, training state.

A run folder holds
    model.safetensors   weights; the metadata carries ``{"config": <JSON>, "kind": ...}``
    state.pt            optimizer, step, epoch, RNG states: ``torch.load(weights_only=True)``
    config.json         the resolved run configuration
Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash (even SIGKILL) leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cpc_fast.errors import UserInputError

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.pt"
CONFIG_NAME = "config.json"


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


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    kind: str,
) -> None:
    """Writes weights as safetensors with ``config`` (JSON) and ``kind`` in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"config": json.dumps(dict(config)), "kind": kind, "format": "pt"}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(
    path: str | os.PathLike, expected_kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Returns ``(state_dict, config)`` from a file written by :func:`save_weights`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise UserInputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if "config" not in metadata:
        raise UserInputError(f"{path}: safetensors metadata has no model config")
    kind = metadata.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise UserInputError(f"{path}: holds a '{kind}' model, expected '{expected_kind}'")
    return tensors, json.loads(metadata["config"])


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Writes training state (tensors, numbers, strings, containers) loadable weights-only."""
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise UserInputError(f"{path}: corrupt or unreadable training state ({exc})") from exc
