"""Checkpoint files: safetensors weights with their config, and training state.

A run folder holds
    model.safetensors   weights; the metadata carries ``{"config": <JSON>, "kind": ...}``
    state.pt            optimizer, step, epoch, RNG states: ``torch.load(weights_only=True)``
    config.json         the resolved run configuration
Every file is written atomically (:func:`cpc_fast.io.atomic.atomic_write`), so a crash (even
SIGKILL) leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.pt"
CONFIG_NAME = "config.json"


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    kind: str,
) -> None:
    """Writes weights as safetensors with ``config`` (JSON) and ``kind`` in the metadata."""

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"config": json.dumps(dict(config)), "kind": kind, "format": "pt"}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(
    path: str | os.PathLike, expected_kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Returns ``(state_dict, config)`` from a file written by :func:`save_weights`."""

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
