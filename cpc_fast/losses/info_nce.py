"""InfoNCE with sampled negatives: the general form and CPC's, over two backends.

- ``fused``: Triton kernels (``cpc_fast.kernels``) that never materialise the
  (rows, N + 1, D) candidate tensor; CUDA tensors (or CPU tensors when the user asks for it
  explicitly under ``TRITON_INTERPRET=1``, which is how CI tests the kernels).
- ``reference``: plain PyTorch (``info_nce_reference.py``), memory-lean, the CPU path.

Choice: ``backend=`` argument, else ``CPC_FAST_LOSS_BACKEND=fused|reference``, else fused for
CUDA tensors when Triton imports and reference otherwise (said once in the log). A backend
that was asked for and cannot run raises :class:`~cpc_fast.errors.UserInputError`.

Fused CPC designs (``design=``, see ``kernels/README.md``): ``"philox"`` draws the negatives
inside the kernels from a seed (the default when no ``neg_index`` is given), ``"gather"``
samples an index tensor with ``torch.randint`` (the default for a given ``neg_index``),
``"dense"`` scores all frames with tensor-core tiles and weights them by draw counts.

Index checks: given indices are range-checked on the host by default (``check_indices=True``:
one ``aminmax`` and one device sync per call), so a bad index is a
:class:`~cpc_fast.errors.UserInputError` naming the argument. ``check_indices=False`` skips
that sync on the fused backend; the kernels still never read out of bounds: a row holding an
out-of-range index gets a NaN loss and NaN gradients (loud, never a silently wrong number).
The reference backend always checks (it has no safe path for a bad index).

``torch.compile``: the fused path runs eagerly inside a compiled model (a graph break at the
loss, ``torch.compiler.disable``); Dynamo cannot trace the Triton launchers.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch
from torch import nn

from cpc_fast.errors import UserInputError
from cpc_fast.losses.info_nce_reference import (
    cpc_info_nce_rows_reference,
    info_nce_rows_reference,
)
from cpc_fast.losses.negatives import (
    PHILOX_COUNTER_LIMIT,
    check_index_range,
    check_neg_index,
    philox_counters,
    philox_key,
    philox_negatives,
    sample_negatives,
)

logger = logging.getLogger(__name__)

BACKEND_ENV = "CPC_FAST_LOSS_BACKEND"
BACKENDS = ("fused", "reference")
DESIGNS = ("philox", "gather", "dense")
REDUCTIONS = ("mean", "sum", "none")
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_DENSE_DIM = 256
_said_fallback = False


class CPCInfoNCEOutput(NamedTuple):
    loss: torch.Tensor  # () mean over valid rows (t + k + 1 < L)
    loss_per_step: torch.Tensor  # (K,) mean over step k's valid rows; NaN when it has none
    accuracy_per_step: torch.Tensor  # (K,) share of those rows whose positive wins strictly


def fused_status() -> tuple[bool, str]:
    """Whether the fused kernels can run here for CUDA tensors, and why (not)."""
    ok, why = _triton_status()
    if not ok:
        return False, why
    if not torch.cuda.is_available():
        return False, "no CUDA device (the fused kernels need one; CPU uses the reference)"
    return True, "Triton and a CUDA device are available"


def default_backend_name() -> str:
    """The backend that CUDA-resident training would get: env override, else by ability."""
    forced = os.environ.get(BACKEND_ENV)
    if forced in BACKENDS:
        return forced
    return "fused" if fused_status()[0] else "reference"


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    *,
    backend: str | None = None,
    deterministic: bool = False,
    return_correct: bool = False,
    check_indices: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over rows of ``keys``: loss_i = logsumexp_j(s_ij) - s_i0, s_ij = <q_i, c_ij>/τ.

    queries (M, D), keys (Nk, D) (may be the same tensor), pos_index (M,) and neg_index (M, N)
    int32/int64 rows of ``keys``. Returns the loss (fp32, or fp64 for fp64 inputs): a scalar
    for "mean"/"sum", (M,) for "none"; with ``return_correct`` also correct (M,) bool, True
    where the positive scores strictly above every negative. ``deterministic=True`` makes the
    fused d_keys independent of thread timing (no atomics; slower, see kernels/README.md).
    ``check_indices=False`` skips the host-side range check (and its device sync) on the
    fused backend: rows with an out-of-range index then get a NaN loss (module docstring).
    """
    _check_float("queries", queries, 2)
    _check_float("keys", keys, 2)
    M, D = queries.shape
    if keys.shape[1] != D:
        raise UserInputError(f"queries have D={D} but keys have D={keys.shape[1]}")
    if M == 0:
        raise UserInputError("info_nce needs at least one query row")
    _check_same_device(queries, keys=keys, pos_index=pos_index, neg_index=neg_index)
    _check_index("pos_index", pos_index, (M,))
    _check_index("neg_index", neg_index, (M, None))
    _check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise UserInputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")

    fused = resolve_backend(backend, queries, keys) == "fused"
    if check_indices or not fused:
        check_index_range(pos_index, keys.shape[0], "pos_index")
        check_index_range(neg_index, keys.shape[0], "neg_index")
    if fused:
        rows, correct = _info_nce_rows_fused(
            queries, keys, pos_index, neg_index, temperature, deterministic
        )
    else:
        rows, correct = info_nce_rows_reference(queries, keys, pos_index, neg_index, temperature)
    loss = {"mean": rows.mean, "sum": rows.sum, "none": lambda: rows}[reduction]()
    return (loss, correct) if return_correct else loss


def cpc_info_nce(
    predictions: torch.Tensor,
    z: torch.Tensor,
    num_negatives: int = 50,
    temperature: float = 1.0,
    neg_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    exclude_positive: bool = False,
    backend: str | None = None,
    deterministic: bool = False,
    *,
    design: str | None = None,
    check_indices: bool = True,
) -> CPCInfoNCEOutput:
    """CPC's InfoNCE (Oord et al. 2018; Li et al. 2021, eq. 2) over all steps and frames.

    predictions (B, K, L, D), any strides (the model's permuted view is read in place);
    ``predictions[:, k, t]`` predicts ``z[:, t + k + 1]`` of z (B, L, D). Rows with
    t + k + 1 >= L are left out. Each row scores its positive against ``num_negatives``
    frames drawn uniformly from the same sequence, independently per (b, k, t) (all L frames,
    or the other L - 1 with ``exclude_positive``), or against the given ``neg_index``
    (B, K, L, N) frame indices. ``seed`` or ``generator`` make the draws reproducible for a
    given backend and design (the Philox design reads one draw of a CUDA generator back to
    the host: a device sync per call; a seed or a CPU generator avoids it). ``design`` picks
    the fused kernels (module docstring) and ``deterministic=True`` makes the fused d_z
    bitwise reproducible (no atomics); the reference backend has one implementation and
    ignores both. ``check_indices=False`` skips the range check of a given ``neg_index`` (a
    device sync) on the fused backend: rows with an out-of-range frame then get a NaN loss.
    Returns fp32 losses (fp64 for fp64 inputs on the reference backend).
    """
    _check_float("predictions", predictions, 4)
    _check_float("z", z, 3)
    B, K, L, D = predictions.shape
    if tuple(z.shape) != (B, L, D):
        raise UserInputError(
            f"z must have shape (B, L, D) = ({B}, {L}, {D}) to match predictions "
            f"{tuple(predictions.shape)}, got {tuple(z.shape)}"
        )
    if L < 2:
        raise UserInputError(
            f"sequences of L={L} frame(s) are too short for CPC: predicting frame t + k + 1 "
            "needs at least 2 frames"
        )
    _check_same_device(predictions, z=z, neg_index=neg_index)
    _check_temperature(temperature)
    if seed is not None and generator is not None:
        raise UserInputError("give either seed or generator, not both")
    if design is not None and design not in DESIGNS:
        raise UserInputError(f"design must be one of {DESIGNS}, got {design!r}")
    fused = resolve_backend(backend, predictions, z) == "fused"
    if neg_index is not None:
        N = check_neg_index(neg_index, B, K, L, check_range=check_indices or not fused)
    else:
        N = int(num_negatives)
        if N < 1:
            raise UserInputError(f"num_negatives must be >= 1, got {num_negatives}")

    if fused:
        rows, correct = _cpc_rows_fused(
            predictions,
            z,
            N,
            temperature,
            neg_index,
            generator,
            seed,
            exclude_positive,
            deterministic,
            design,
        )
    else:
        if neg_index is None:
            neg_index = _sample(B, K, L, N, z.device, generator, seed, exclude_positive)
        rows, correct = cpc_info_nce_rows_reference(predictions, z, neg_index, temperature)
    return summarise_cpc_rows(rows, correct)


def summarise_cpc_rows(rows: torch.Tensor, correct: torch.Tensor) -> CPCInfoNCEOutput:
    """Per-row loss/correct (B, K, L), zero/False past the sequence end -> the CPC output."""
    B, K, L = rows.shape
    counts = (B * (L - 1 - torch.arange(K, device=rows.device)).clamp(min=0)).to(rows.dtype)
    loss_per_step = rows.sum((0, 2)) / counts
    accuracy_per_step = correct.sum((0, 2)).to(rows.dtype) / counts
    return CPCInfoNCEOutput(rows.sum() / counts.sum(), loss_per_step, accuracy_per_step)


@torch.compiler.disable
def _info_nce_rows_fused(queries, keys, pos_index, neg_index, temperature, deterministic):
    """(M,) fp32 losses and correct flags from the gather kernels, grid (1, 1, M)."""
    from cpc_fast.kernels.info_nce import Candidates

    from ._fused import GatherInfoNCE

    M = queries.shape[0]
    cand = Candidates(pos_index[None, None], neg_index[None, None], neg_index.shape[1], 0, False)
    rows, correct = GatherInfoNCE.apply(
        queries[None, None], _row_major(keys)[None], cand, 1.0 / temperature, deterministic
    )
    return rows.view(M), correct.view(M)


@torch.compiler.disable
def _cpc_rows_fused(
    predictions,
    z,
    N,
    temperature,
    neg_index,
    generator,
    seed,
    exclude_positive,
    deterministic,
    design,
):
    from cpc_fast.kernels.info_nce import Candidates

    from ._fused import DenseCPCInfoNCE, GatherInfoNCE

    B, K, L, D = predictions.shape
    counters = philox_counters(B, K, L, N)
    philox_fits = counters < PHILOX_COUNTER_LIMIT
    if design is None:
        design = "philox" if neg_index is None and philox_fits else "gather"
    if design == "philox":
        if neg_index is not None:
            raise UserInputError(
                "design='philox' draws its own negatives: drop neg_index or use design='gather'"
            )
        if not philox_fits:
            raise UserInputError(
                f"design='philox' counts draws in int32: B*K*L*ceil(N/4) = {counters} is too "
                "many; use design='gather'"
            )
    if neg_index is None and (design == "gather" or not philox_fits):
        neg_index = _sample(B, K, L, N, z.device, generator, seed, exclude_positive)
    philox_seed = _philox_seed(generator, seed) if neg_index is None else 0
    # exclude_positive only shapes in-kernel draws: given indices are used as they are.
    cand = Candidates(None, neg_index, N, philox_seed, exclude_positive and neg_index is None)
    z = _row_major(z)
    scale = 1.0 / temperature
    if design == "dense":
        if D > _MAX_DENSE_DIM:
            raise UserInputError(f"design='dense' supports D <= {_MAX_DENSE_DIM}, got D={D}")
        dtype = torch.promote_types(predictions.dtype, z.dtype)
        return DenseCPCInfoNCE.apply(predictions.to(dtype), z.to(dtype), cand, scale)
    return GatherInfoNCE.apply(predictions, z, cand, scale, deterministic)


def _philox_seed(generator: torch.Generator | None, seed: int | None) -> int:
    if seed is not None:
        return philox_key(seed)
    # One draw from the given (or torch's default CPU) generator, so torch.manual_seed and
    # generator state keep controlling the negatives.
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def _sample(B, K, L, N, device, generator, seed, exclude_positive) -> torch.Tensor:
    """sample_negatives from ``generator``, or from a fresh one seeded with ``seed``."""
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    return sample_negatives(
        B, K, L, N, device=device, generator=generator, exclude_positive=exclude_positive
    )


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """ "fused" or "reference" for these tensors: the ``backend`` argument, else
    ``CPC_FAST_LOSS_BACKEND``, else fused when it can run (said once in the log when not).
    A backend that was asked for and cannot run raises :class:`UserInputError`."""
    global _said_fallback
    source = "backend argument"
    if backend is None and os.environ.get(BACKEND_ENV):
        backend, source = os.environ[BACKEND_ENV], BACKEND_ENV
    if backend is not None and backend not in BACKENDS:
        raise UserInputError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    ok, why = _fused_runnable(*tensors, explicit=backend == "fused")
    if ok:
        return "fused"
    if backend == "fused":
        raise UserInputError(
            f"the fused InfoNCE backend was requested ({source}) but cannot run: {why}"
        )
    if not _said_fallback:
        logger.info("InfoNCE: using the reference backend (%s)", why)
        _said_fallback = True
    return "reference"


def _fused_runnable(*tensors: torch.Tensor, explicit: bool) -> tuple[bool, str]:
    ok, why = _triton_status()
    if not ok:
        return False, why
    from cpc_fast.kernels.info_nce import MAX_DIM, MAX_ROWS, interpreted

    device = tensors[0].device
    if device.type != "cuda" and not (explicit and interpreted() and device.type == "cpu"):
        return False, f"tensors are on {device.type}, the fused kernels need CUDA tensors"
    for t in tensors:
        if t.dtype not in _FUSED_DTYPES:
            return False, f"{t.dtype} inputs (the fused kernels take float32/bfloat16/float16)"

    D = tensors[0].shape[-1]
    if D > MAX_DIM:
        return False, f"D={D} is wider than the kernels' {MAX_DIM}"
    rows = tensors[0].numel() // max(D, 1)
    if rows > MAX_ROWS:
        return False, f"{rows} query rows exceed the kernels' int32 row ids ({MAX_ROWS})"
    return True, "ok"


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401

        import cpc_fast.kernels.info_nce  # noqa: F401
    except Exception as exc:  # any broken install means "not available", with the reason
        return False, f"Triton kernels unavailable ({type(exc).__name__}: {exc})"
    return True, "ok"


def _row_major(x: torch.Tensor) -> torch.Tensor:
    """Keys are gathered row by row: rows must be contiguous in memory to coalesce."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_float(name: str, x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise UserInputError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != dim or not x.is_floating_point():
        raise UserInputError(
            f"{name} must be a {dim}-d floating-point tensor, got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}"
        )


def _check_index(name: str, x: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int32, torch.int64):
        raise UserInputError(f"{name} must be an int32 or int64 tensor")
    ok = x.dim() == len(shape) and all(
        s is None or s == n for s, n in zip(shape, x.shape, strict=True)
    )
    if not ok or x.shape[-1] < 1:
        want = tuple("N" if s is None else s for s in shape)
        raise UserInputError(f"{name} must have shape {want} (N >= 1), got {tuple(x.shape)}")


def _check_same_device(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise UserInputError(f"{name} is on {t.device} but the queries are on {ref.device}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise UserInputError(f"temperature must be positive, got {temperature}")


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce`: forward(queries, keys, pos_index, neg_index)."""

    def __init__(
        self,
        temperature: float = 1.0,
        reduction: str = "mean",
        *,
        backend: str | None = None,
        deterministic: bool = False,
        check_indices: bool = True,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        if reduction not in REDUCTIONS:
            raise UserInputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.temperature, self.reduction = temperature, reduction
        self.backend, self.deterministic = backend, deterministic
        self.check_indices = check_indices

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        pos_index: torch.Tensor,
        neg_index: torch.Tensor,
    ) -> torch.Tensor:
        return info_nce(
            queries,
            keys,
            pos_index,
            neg_index,
            self.temperature,
            self.reduction,
            backend=self.backend,
            deterministic=self.deterministic,
            check_indices=self.check_indices,
        )


class CPCInfoNCELoss(nn.Module):
    """Module form of :func:`cpc_info_nce`: forward(predictions, z, neg_index=None, ...)."""

    def __init__(
        self,
        num_negatives: int = 50,
        temperature: float = 1.0,
        exclude_positive: bool = False,
        *,
        backend: str | None = None,
        deterministic: bool = False,
        design: str | None = None,
        check_indices: bool = True,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.num_negatives, self.temperature = num_negatives, temperature
        self.exclude_positive, self.backend = exclude_positive, backend
        self.deterministic, self.design = deterministic, design
        self.check_indices = check_indices

    def forward(
        self,
        predictions: torch.Tensor,
        z: torch.Tensor,
        neg_index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> CPCInfoNCEOutput:
        return cpc_info_nce(
            predictions,
            z,
            self.num_negatives,
            self.temperature,
            neg_index,
            generator,
            seed,
            self.exclude_positive,
            self.backend,
            self.deterministic,
            design=self.design,
            check_indices=self.check_indices,
        )


__all__ = [
    "BACKEND_ENV",
    "CPCInfoNCELoss",
    "CPCInfoNCEOutput",
    "InfoNCELoss",
    "cpc_info_nce",
    "default_backend_name",
    "fused_status",
    "info_nce",
    "philox_negatives",
    "resolve_backend",
    "sample_negatives",
    "summarise_cpc_rows",
]
