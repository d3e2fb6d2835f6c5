"""Checkpoint files: safetensors weights with their config, and training state.

A run folder holds
    model.safetensors   weights; the metadata carries ``{"config": <JSON>, "kind": ...}`` and,
                        in a training run's folder, the "stamp" of its state.pt
    state.pt            optimizer, step, epoch, RNG states: ``torch.load(weights_only=True)``
    config.json         the resolved run configuration
Every file is written atomically (:func:`cpc_fast.io.atomic.atomic_write`), so a crash (even
SIGKILL) leaves either the old file or the new one. Files are serialised in memory first and
written by Python, so a full disk is an ``OSError`` naming the file, whatever the format.
Weights that hold a NaN or an infinity are refused when loaded: no result is computed from
a model that diverged. The same weights and metadata give the same bytes (the metadata in key
order: safetensors writes it in a hash map's order, which changes from one save to the next).
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from cpc_fast.errors import UserInputError
from cpc_fast.io.atomic import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.pt"
CONFIG_NAME = "config.json"


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    kind: str,
    *,
    stamp: str | None = None,
) -> None:
    """Writes weights as safetensors with ``config`` (JSON) and ``kind`` in the metadata;
    ``stamp`` (metadata "stamp") ties the file to the training state saved with it."""

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"config": json.dumps(dict(config)), "kind": kind, "format": "pt"}
    if stamp is not None:
        metadata["stamp"] = stamp
    atomic_write_bytes(path, _canonical(save(tensors, metadata=metadata)))


def _canonical(blob: bytes) -> bytes:
    """A safetensors file with its metadata in key order, first in the header: the same
    content, the same bytes. The tensors' entries and data are left as written (their
    offsets stay valid); the header is padded with spaces to a multiple of 8 bytes, as
    safetensors pads it, so the data stays aligned."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + size :]


def weights_stamp(path: str | os.PathLike) -> str | None:
    """The "stamp" a weights file was saved with ("" when it has none), or None when it
    cannot be read whole (missing, truncated, not safetensors)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("stamp", "")
    except Exception:  # safetensors raises its own error types; any failure means "no"
        return None


def non_finite_tensor(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


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
    bad = non_finite_tensor(tensors)
    if bad is not None:
        raise UserInputError(
            f"{path}: weight {bad} holds NaN or infinite values (the training diverged); "
            "use a checkpoint from before the divergence"
        )
    return tensors, json.loads(metadata["config"])


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Writes training state (tensors, numbers, strings, containers) loadable weights-only."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise UserInputError(f"{path}: corrupt or unreadable training state ({exc})") from exc
