"""Argument checks shared by the InfoNCE functionals: one clear error naming the argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cpc_fast.errors import UserInputError


def check_float(name: str, x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise UserInputError(f"`{name}` must be a tensor, got {type(x).__name__}")
    if x.dim() != dim or not x.is_floating_point():
        raise UserInputError(
            f"`{name}` must be a {dim}-d floating-point tensor, got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}"
        )


def check_index(name: str, x: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """An int32/int64 tensor of this shape (None: any size >= 1)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int32, torch.int64):
        raise UserInputError(f"`{name}` must be an int32 or int64 tensor")
    ok = x.dim() == len(shape) and all(
        s is None or s == n for s, n in zip(shape, x.shape, strict=True)
    )
    if not ok or x.shape[-1] < 1:
        want = tuple("N" if s is None else s for s in shape)
        raise UserInputError(f"`{name}` must have shape {want} (N >= 1), got {tuple(x.shape)}")


def check_same_device(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise UserInputError(f"`{name}` is on {t.device} but the queries are on {ref.device}")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise UserInputError(f"`temperature` must be positive, got {temperature}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise UserInputError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def follow_deterministic(deterministic: bool | None) -> bool:
    """``deterministic``, or when None torch's global flag
    (``torch.use_deterministic_algorithms(True)``): a run that asked for determinism gets
    the fused d_keys without atomics without saying so twice."""
    if deterministic is None:
        return torch.are_deterministic_algorithms_enabled()
    return bool(deterministic)
