"""A training run's checkpoint: model, optimizer, progress and RNG states, written atomically.

One :class:`Checkpointer` per run folder, for CPC pre-training and emotion training alike:

    state.pt            {"format", "stamp", "model", "optimizer", <the progress fields>,
                        "world_size", "rng"[, "ranks"]}: everything a resumed run needs,
                        ``torch.load(weights_only=True)``
    model.safetensors   the same weights, written by the owner's ``save_weights`` with the
                        model's config and the state's "stamp" in the metadata (what
                        ``load_cpc`` and ``predict`` read)

state.pt is written first and is the checkpoint; the weights file is derived from it. If a
run stops between the two (a full disk), or the weights file is damaged, loading the
checkpoint sees that its stamp is not the state's and writes it again from the state, so
weights and state always come from the same step. Weights holding a NaN or an infinity are
never written: :meth:`Checkpointer.save` refuses them and the last checkpoint is kept.

The progress is one dataclass of plain values (and tensors), saved and restored as a whole:
its fields are the state file's top-level keys. Rank 0 alone writes and reads; what it reads
is broadcast, so the ranks need no shared filesystem. Every file is written atomically
(:mod:`cpc_fast.io.atomic`). RNG states are torch's, NumPy's and Python's global generators
(and CUDA's when present), so a resumed run draws what an uninterrupted one would: rank 0's
as ``"rng"``, and under DDP every rank's own (with any per-rank state the caller passes,
such as a generator of its own) as ``"ranks"``, restored to the same rank when the world
size is the same.
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from cpc_fast.errors import TrainingDiverged, UserInputError
from cpc_fast.io.checkpoint import (
    STATE_NAME,
    WEIGHTS_NAME,
    load_state,
    save_state,
    weights_stamp,
)
from cpc_fast.models.loading import unwrap
from cpc_fast.training.distributed import DistEnv, gather_to_main, on_main_then_broadcast

P = TypeVar("P")
STATE_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """torch/numpy/python RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (saving the global RNG)
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured (CUDA only with the same device count)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(  # noqa: NPY002 (restoring the global RNG)
        {
            "bit_generator": "MT19937",
            "state": {
                "key": state["numpy_key"].numpy().astype(np.uint32),
                "pos": state["numpy_pos"],
            },
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], py_state, state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Saves and restores one run folder's checkpoint (module docstring).

    Args:
        folder: the run folder.
        env: this process's place in the job: rank 0 writes and reads.
        save_weights: ``save_weights(model, path, stamp=...)`` writes the weights file with
            the stamp in its metadata; None writes no weights file (the state file alone
            makes the run resumable).
        log: hears what loading repaired (one line).
    """

    def __init__(
        self,
        folder: str | Path,
        env: DistEnv,
        *,
        save_weights: Callable[..., None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.env = env
        self.save_weights = save_weights
        self.log = log

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_NAME

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_NAME

    def exists(self) -> bool:
        """Whether a state file is there to resume from (rank 0's view, on every rank)."""
        return bool(on_main_then_broadcast(self.env, self.state_path.is_file))

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        progress: Any,
        rank_state: dict[str, Any] | None = None,
    ) -> None:
        """Writes the state file, then the weights, on rank 0. Under DDP every rank must call
        it: it gathers each rank's RNG states and ``rank_state``. Raises
        :class:`TrainingDiverged`, writing nothing, when a weight is NaN or infinite (the
        same on every rank: DDP keeps the weights equal)."""
        _require_finite_weights(model, self.folder)
        mine = {"rng": rng_state(), **(rank_state or {})}
        ranks = gather_to_main(self.env, mine)
        if not self.env.is_main:
            return
        stamp = secrets.token_hex(8)  # the OS's entropy: no RNG of the run is drawn from
        state = {
            "format": STATE_FORMAT,
            "stamp": stamp,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            **dataclasses.asdict(progress),
            "world_size": self.env.world_size,
            "rng": mine["rng"],
        }
        if self.env.distributed:
            state["ranks"] = ranks
        elif rank_state:
            state["ranks"] = [mine]
        save_state(self.state_path, state)
        if self.save_weights is not None:
            self.save_weights(model, self.weights_path, stamp=stamp)

    def load(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, progress_type: type[P]
    ) -> tuple[P, dict[str, Any]]:
        """Restores model, optimizer and RNG states in place; returns the progress and this
        rank's saved state ({"rng", <rank_state>}, with "world_size": the job's then)."""
        saved = on_main_then_broadcast(self.env, self._read)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        world_size = int(saved["world_size"])
        ranks = saved.get("ranks")
        mine = {"rng": saved["rng"]}
        if ranks is not None and world_size == self.env.world_size:
            mine = ranks[self.env.rank]
        set_rng_state(mine["rng"])
        if self.env.is_main:
            self._match_weights(model, saved.get("stamp", ""))
        # A field added since the state was written keeps its default.
        values = {
            f.name: saved[f.name] for f in dataclasses.fields(progress_type) if f.name in saved
        }
        return progress_type(**values), {**mine, "world_size": world_size}

    def _match_weights(self, model: nn.Module, stamp: str) -> None:
        """Rewrites the weights file from the restored model unless it is whole and was
        saved with the state (a state without a stamp predates stamps: whole is enough)."""
        if self.save_weights is None or weights_stamp(self.weights_path) == stamp:
            return
        if self.log is not None:
            self.log(
                f"{self.weights_path}: missing, damaged or older than {STATE_NAME}; "
                f"written again from {STATE_NAME}"
            )
        self.save_weights(model, self.weights_path, stamp=stamp or None)

    def saved(self, name: str) -> Any:
        """One saved progress field (rank 0's read, on every rank), e.g. "epoch"."""
        return on_main_then_broadcast(self.env, lambda: self._read()[name])

    def remove(self) -> None:
        """Deletes the state file (rank 0): the run is finished and need not resume."""
        if self.env.is_main:
            self.state_path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any]:
        saved = load_state(self.state_path)
        if saved.get("format") != STATE_FORMAT:
            raise UserInputError(
                f"{self.state_path}: written by another version; start over with `restart=True`"
            )
        return saved


def _require_finite_weights(model: nn.Module, folder: Path) -> None:
    params = [p.detach() for p in unwrap(model).parameters()]
    largest = torch.nn.utils.get_total_norm(params, math.inf) if params else torch.zeros(())
    if not math.isfinite(float(largest)):
        raise TrainingDiverged(
            f"{folder}: the model's weights hold NaN or infinite values; no checkpoint is "
            "written, the last one is kept"
        )


__all__ = ["STATE_FORMAT", "Checkpointer", "rng_state", "set_rng_state"]
