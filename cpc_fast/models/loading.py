"""Saving and loading pretrained CPC models (safetensors + the CPCConfig in the metadata).

Usage::

    model = cpc_fast.load_cpc("runs/librispeech")  # a run folder or its model.safetensors
    c = model.context(wave)  # (B, T) 16-kHz float32 -> (B, floor(T / 160), 256)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cpc_fast.io.checkpoint import WEIGHTS_NAME, save_weights
from cpc_fast.models.cpc import CPC_KIND, CPCModel


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def save_cpc(model: nn.Module, path: str | os.PathLike, *, stamp: str | None = None) -> None:
    """Writes a :class:`CPCModel` (possibly DDP/compile-wrapped) to ``path`` atomically;
    ``stamp`` ties it to a training checkpoint (:mod:`cpc_fast.training.checkpointer`)."""
    model = unwrap(model)
    if not isinstance(model, CPCModel):
        raise TypeError(f"expected a CPCModel, got {type(model).__name__}")
    save_weights(path, model.state_dict(), model.config.to_dict(), kind=CPC_KIND, stamp=stamp)


def load_cpc(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CPCModel:
    """Loads a pretrained CPC model for feature extraction, in eval mode.

    Args:
        path: a run folder written by ``cpc-fast pretrain`` (its ``model.safetensors`` is
            used) or a ``.safetensors`` file written by :func:`save_cpc`.
        map_location: the device to put the model on.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without ``model.safetensors``.
        UserInputError: the file is not a CPC model (another kind, no config, wrong shapes)
            or its weights hold NaN or infinite values.
    """
    path = Path(path)
    if path.is_dir():
        folder, path = path, path / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} in this folder (not a CPC run)")
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return CPCModel.from_file(path, map_location)


__all__ = ["CPC_KIND", "load_cpc", "save_cpc", "unwrap"]
