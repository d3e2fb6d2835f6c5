"""CPC's InfoNCE over all steps and frames, on the fused or the reference backend.

Fused CPC designs (``design=``, see ``kernels/README.md``): ``"philox"`` draws the negatives
inside the kernels from a seed (the default when no ``neg_index`` is given and the draws are
per row and per sequence), ``"gather"`` samples an index tensor with ``torch.randint`` (the
default for a given ``neg_index``, negatives from the whole batch, or negatives shared by
the steps), ``"dense"`` scores all frames with tensor-core tiles and weights them by draw
counts (sequence negatives, T = L only).

Index checks: a given ``neg_index`` is range-checked by default (``check_indices=True``: one
``aminmax`` and one device sync per call; on the fused backend inside the custom op, so in
compiled graphs too). ``check_indices=False`` skips it on the fused backend; the kernels
still never read out of bounds: a row holding an out-of-range index gets a NaN loss and NaN
gradients. Under ``torch.compile`` the check is a device-side assertion in the graph on
either backend (an error, never a silent number, and no host sync: CUDA graphs capture it).

``torch.compile``: the fused designs are custom ops (``cpc_fast::fused_info_nce``) and the
reference is plain PyTorch, so a compiled model traces through the loss with
``fullgraph=True``. A ``torch.Generator`` cannot be traced: compiled, give ``neg_index``, a
``seed`` with the Philox design, or let torch's default generator draw.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cpc_fast.errors import UserInputError
from cpc_fast.losses import negatives as sampling
from cpc_fast.losses._checks import (
    check_choice,
    check_float,
    check_same_device,
    check_temperature,
    follow_deterministic,
)
from cpc_fast.losses.backend import fused_ops, resolve_backend
from cpc_fast.losses.info_nce_reference import cpc_info_nce_rows_reference

DESIGNS = ("philox", "gather", "dense")
NEGATIVES_FROM = ("sequence", "batch")
_MAX_DENSE_DIM = 256


class CPCInfoNCEOutput(NamedTuple):
    loss: torch.Tensor  # () mean over valid rows (t + k + 1 < L)
    loss_per_step: torch.Tensor  # (K,) mean over step k's valid rows; NaN when it has none
    accuracy_per_step: torch.Tensor  # (K,) share of those rows whose positive wins


class _Negatives(NamedTuple):
    """Where one call's negatives come from: the parameter object of the CPC paths."""

    N: int
    index: torch.Tensor | None  # (B, K or 1, T, N) given or drawn; None: Philox in-kernel
    across_batch: bool
    share: bool
    exclude_positive: bool
    generator: torch.Generator | None
    seed: int | torch.Tensor | None
    check: bool


def cpc_info_nce(
    predictions: torch.Tensor,
    z: torch.Tensor,
    num_negatives: int = 50,
    temperature: float = 1.0,
    neg_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    exclude_positive: bool = False,
    backend: str | None = None,
    deterministic: bool | None = None,
    *,
    design: str | None = None,
    check_indices: bool = True,
    negatives_from: str = "sequence",
    share_negatives_across_steps: bool = False,
    correct_on_tie: bool = False,
) -> CPCInfoNCEOutput:
    """CPC's InfoNCE (Oord et al. 2018; Li et al. 2021, eq. 2) over all steps and frames.

    predictions (B, K, T, D), T <= L, any strides (the model's permuted view is read in
    place); ``predictions[:, k, t]`` predicts ``z[:, t + k + 1]`` of z (B, L, D). Rows with
    t + k + 1 >= L are left out (T = L - K keeps the same T rows at every step, CPC_audio's
    window). Each row scores its positive against ``num_negatives`` negatives drawn
    uniformly, independently per (b, k, t): frames of its own sequence (``negatives_from=
    "sequence"``: all L, or the other L - 1 with ``exclude_positive``) or of the whole batch
    (``"batch"``: B·L frames); with ``share_negatives_across_steps`` one draw per (b, t)
    serves all K steps (CPC_audio). Or against the given ``neg_index`` (B, K, T, N) (or
    (B, 1, T, N), shared by the steps): frame indices, or with ``"batch"`` rows b'·L + f of
    the batch.

    ``seed`` or ``generator`` make the draws reproducible for a given backend and design.
    The Philox design never reads its key back to the host: it draws it on the tensors'
    device (from ``generator`` or torch's default generator), or takes ``seed`` as an int
    or as a 0-d integer tensor on that device (a key the caller advances there), so a CUDA
    graph that captured the call draws fresh negatives at every replay unless ``seed``
    fixes them. ``design`` picks the fused kernels
    (module docstring) and ``deterministic=True`` makes the fused d_z bitwise reproducible
    (no atomics; None, the default, follows ``torch.use_deterministic_algorithms``); the
    reference backend has one implementation and ignores both. The
    accuracy counts a row whose positive scores strictly above every negative, a negative
    at the positive's own frame being a tie; with ``correct_on_tie`` a tie counts (the
    argmax convention of CPC_audio). Returns fp32 losses (fp64 for fp64 inputs on the
    reference backend).
    """
    _check_arguments(predictions, z, neg_index, temperature, generator, seed, design)
    check_choice("negatives_from", negatives_from, NEGATIVES_FROM)
    if share_negatives_across_steps and exclude_positive:
        raise UserInputError(
            "`exclude_positive` cannot hold for negatives shared by the steps (each step has "
            "its own positive): drop one of them"
        )
    B, K, T, D = predictions.shape
    L = z.shape[1]
    N = sampling.check_neg_index(neg_index, B, K, T) if neg_index is not None else num_negatives
    if N < 1:
        raise UserInputError(f"`num_negatives` must be >= 1, got {num_negatives}")
    negatives = _Negatives(
        N=int(N),
        index=neg_index,
        across_batch=negatives_from == "batch",
        share=share_negatives_across_steps,
        exclude_positive=exclude_positive,
        generator=generator,
        seed=seed,
        check=check_indices,
    )
    scale = 1.0 / temperature
    if resolve_backend(backend, predictions, z) == "fused":
        design = _fused_design(design, negatives, predictions.shape, L)
        deterministic = follow_deterministic(deterministic)
        q, keys, neg, seed, options = _fused_arguments(
            predictions, z, negatives, scale, design, deterministic, correct_on_tie
        )
        # The op calls the launcher, which launches: three calls from here to the kernel.
        rows, correct, _ = fused_ops().fused_info_nce(q, keys, None, neg, seed, *options)
    else:
        negatives = _drawn(negatives, B, K, T, L, z.device)
        if negatives.check:
            sampling.check_index_range(
                negatives.index, B * L if negatives.across_batch else L, "neg_index"
            )
        rows, correct = cpc_info_nce_rows_reference(
            predictions,
            z,
            negatives.index,
            temperature,
            batch_keys=negatives.across_batch,
            correct_on_tie=correct_on_tie,
        )
    return summarise_cpc_rows(rows, correct, L)


def _check_arguments(predictions, z, neg_index, temperature, generator, seed, design) -> None:
    check_float("predictions", predictions, 4)
    check_float("z", z, 3)
    B, T, D = predictions.shape[0], predictions.shape[2], predictions.shape[3]
    L = z.shape[1]
    if z.shape[0] != B or z.shape[2] != D or T > L:
        raise UserInputError(
            f"`z` must have shape (B, L, D) = ({B}, L >= {T}, {D}) to match `predictions` "
            f"{tuple(predictions.shape)}, got {tuple(z.shape)}"
        )
    if L < 2:
        raise UserInputError(
            f"sequences of L={L} frame(s) are too short for CPC: predicting frame t + k + 1 "
            "needs at least 2 frames"
        )
    check_same_device(predictions, z=z, neg_index=neg_index)
    check_temperature(temperature)
    if seed is not None and generator is not None:
        raise UserInputError("give either `seed` or `generator`, not both")
    if design is not None:
        check_choice("design", design, DESIGNS)


def summarise_cpc_rows(
    rows: torch.Tensor, correct: torch.Tensor, seq_len: int | None = None
) -> CPCInfoNCEOutput:
    """Per-row loss/correct (B, K, T), zero/False past the sequence end -> the CPC output.
    ``seq_len`` is L, the frames per sequence (default T)."""
    B, K, T = rows.shape
    L = T if seq_len is None else seq_len
    steps = torch.arange(K, device=rows.device)
    counts = (B * torch.minimum(L - 1 - steps, torch.full_like(steps, T)).clamp(min=0)).to(
        rows.dtype
    )
    loss_per_step = rows.sum((0, 2)) / counts
    accuracy_per_step = correct.sum((0, 2)).to(rows.dtype) / counts
    return CPCInfoNCEOutput(rows.sum() / counts.sum(), loss_per_step, accuracy_per_step)


def _fused_design(design: str | None, negatives: _Negatives, shape, L: int) -> str:
    """The fused design for this call: the caller's, checked, or the default."""
    B, K, T, D = shape
    own_draws = negatives.index is None and not (negatives.across_batch or negatives.share)
    philox_fits = sampling.philox_counters(B, K, T, negatives.N) < sampling.PHILOX_COUNTER_LIMIT
    if design is None:
        return "philox" if own_draws and philox_fits else "gather"
    if design == "philox" and not own_draws:
        raise UserInputError(
            "`design='philox'` draws its own negatives per row within each sequence: drop "
            "`neg_index`, `negatives_from='batch'` and `share_negatives_across_steps`, or use "
            "`design='gather'`"
        )
    if design == "philox" and not philox_fits:
        raise UserInputError(
            f"`design='philox'` counts draws in int32: B*K*T*ceil(N/4) = "
            f"{sampling.philox_counters(B, K, T, negatives.N)} is too many; use `design='gather'`"
        )
    if design == "dense" and (negatives.across_batch or T != L or D > _MAX_DENSE_DIM):
        raise UserInputError(
            f"`design='dense'` scores the frames of each sequence: it needs "
            f"`negatives_from='sequence'`, T = L and D <= {_MAX_DENSE_DIM} (got T={T}, L={L}, "
            f"D={D})"
        )
    return design


def _fused_arguments(predictions, z, negatives: _Negatives, scale, design, deterministic, on_tie):
    """The fused op's arguments for this call: (queries (B, K, T, D), keys (B, L, D) or
    (1, B·L, D), negatives (B, K, T, N) or None, the Philox seed or None, FusedOptions),
    the options packed here once for the op and its launchers."""
    B, K, T, D = predictions.shape
    L = z.shape[1]
    fused = fused_ops()
    philox = (
        design in ("philox", "dense")
        and negatives.index is None
        and not negatives.share
        and sampling.philox_counters(B, K, T, negatives.N) < sampling.PHILOX_COUNTER_LIMIT
    )
    if not philox:
        negatives = _drawn(negatives, B, K, T, L, z.device)
    neg = negatives.index.expand(B, K, T, negatives.N) if negatives.index is not None else None
    keys = row_major(z)
    if negatives.across_batch:
        keys = keys.reshape(1, B * L, D)
    if design == "dense":
        dtype = torch.promote_types(predictions.dtype, z.dtype)
        predictions, keys = predictions.to(dtype), keys.to(dtype)
    options = fused.FusedOptions(
        negatives.N,
        scale,
        exclude_positive=negatives.exclude_positive and philox,
        seq_len=L,
        batch_keys=negatives.across_batch,
        correct_on_tie=on_tie,
        design="dense" if design == "dense" else "gather",
        deterministic=deterministic,
        check_indices=sampling.op_checks_indices(
            None, neg, keys.shape[1], negatives.check and not philox
        ),
    )
    seed = _philox_seed(negatives.generator, negatives.seed, z.device) if philox else None
    return predictions, keys, neg, seed, options


def _philox_seed(
    generator: torch.Generator | None, seed: int | torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """The Philox key as a 0-d int64 tensor on ``device``, made there without a host sync:
    the kernels read it on the device, so a CUDA graph that captured this call draws a fresh
    key at every replay (torch's generators advance under graphs, as for dropout)."""
    if isinstance(seed, torch.Tensor):  # a key the caller keeps (and advances) on the device
        return seed.to(device=device, dtype=torch.int64) & (2**63 - 1)
    if seed is not None:
        return torch.full((), sampling.philox_key(seed), dtype=torch.int64, device=device)
    # One draw from the given generator, or torch's default one of the tensors' device, so
    # torch.manual_seed and generator state keep controlling the negatives.
    where = generator.device if generator is not None else device
    key = torch.randint(0, 2**62, (), generator=generator, device=where)
    if key.device == device:
        return key
    # A CPU generator's draw for CUDA tensors: read on the host (no device sync) and filled
    # in on the device, instead of a copy that would wait for the device.
    return torch.full((), int(key), dtype=torch.int64, device=device)


def _drawn(negatives: _Negatives, B: int, K: int, T: int, L: int, device) -> _Negatives:
    """``negatives`` with an index tensor: the given one, or drawn from ``generator`` (or a
    fresh one seeded with ``seed``): (B, K, T, N), (B, 1, T, N) when shared."""
    if negatives.index is not None:
        return negatives
    generator = negatives.generator
    if negatives.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(negatives.seed))
    index = sampling.sample_negatives(
        B,
        1 if negatives.share else K,
        L,
        negatives.N,
        device=device,
        generator=generator,
        exclude_positive=negatives.exclude_positive,
        rows=T,
        across_batch=negatives.across_batch,
    )
    # Our own draws are in range: no check (and no device sync) needed.
    return negatives._replace(index=index, check=False)


def row_major(x: torch.Tensor) -> torch.Tensor:
    """Keys are gathered row by row: rows must be contiguous in memory to coalesce."""
    return x if x.stride(-1) == 1 else x.contiguous()
