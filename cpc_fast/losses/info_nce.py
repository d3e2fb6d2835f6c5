"""InfoNCE with sampled negatives: the general form and CPC's, over two backends.

- ``fused``: Triton kernels (``cpc_fast.kernels``) that never materialise the
  (rows, N + 1, D) candidate tensor, in any mode; CUDA tensors (or CPU tensors when the user
  asks for it explicitly under ``TRITON_INTERPRET=1``, which is how CI tests the kernels).
- ``reference``: plain PyTorch (``info_nce_reference.py``), memory-lean, the CPU path.

The backend is chosen by :func:`~cpc_fast.losses.backend.resolve_backend` (the ``backend=``
argument, ``CPC_FAST_LOSS_BACKEND``, or the tensors). The CPC form lives in
``cpc_fast.losses.cpc`` and is re-exported here, with the module forms of both.

``torch.compile``: both backends of :func:`info_nce` are ``torch.library`` custom ops with a
fake implementation and an autograd formula (``cpc_fast::fused_info_nce``,
``cpc_fast::reference_info_nce``), and so are the fused CPC designs: a compiled model traces
through the loss with ``fullgraph=True``, no graph break.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from cpc_fast.errors import UserInputError
from cpc_fast.losses._checks import (
    check_choice,
    check_float,
    check_index,
    check_same_device,
    check_temperature,
    follow_deterministic,
)
from cpc_fast.losses.backend import (  # noqa: F401  (re-exported: the module's API)
    BACKEND_ENV,
    default_backend_name,
    fused_ops,
    fused_status,
    resolve_backend,
)
from cpc_fast.losses.cpc import (  # noqa: F401  (re-exported)
    CPCInfoNCEOutput,
    cpc_info_nce,
    row_major,
    summarise_cpc_rows,
)
from cpc_fast.losses.info_nce_reference import info_nce_rows_reference
from cpc_fast.losses.negatives import (  # noqa: F401
    IGNORE_INDEX,
    op_checks_indices,
    philox_negatives,
    sample_negatives,
)

REDUCTIONS = ("mean", "sum", "none")
SIMILARITIES = ("dot", "cosine")
MASK_DUPLICATES = ("none", "index", "value")
# correct_on_tie's third value: fairseq's accuracy (the positive is the argmax and not also
# the argmin of the N + 1 logits), which neither False nor True expresses.
UNLESS_ALL_TIE = "unless_all_tie"


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    *,
    similarity: str = "dot",
    mask_duplicates: str = "none",
    correct_on_tie: bool | str = False,
    backend: str | None = None,
    deterministic: bool | None = None,
    return_correct: bool = False,
    check_indices: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over rows of ``keys``: loss_i = logsumexp_j(s_ij) - s_i0, s_ij = sim(q_i, c_ij)/τ.

    queries (M, D), keys (Nk, D) (may be the same tensor), pos_index (M,) and neg_index (M, N)
    int32/int64 rows of ``keys``; a row whose ``pos_index`` is ``IGNORE_INDEX`` (-100,
    PyTorch's ``ignore_index``) drops out: loss 0, not correct, no gradient, and not counted
    by "mean". ``similarity``: "dot" (``<q, c>``) or "cosine" (as
    ``torch.nn.functional.cosine_similarity`` with eps 1e-8, differentiated through the
    normalisation). ``mask_duplicates``: a negative equal to its row's positive by "index"
    or by "value" (all D components) gets the logit -inf (wav2vec 2.0's masking), or "none";
    a row whose negatives are all masked has loss 0 and is correct.

    Returns the loss (fp32, or fp64 for fp64 inputs): a scalar for "mean" (over the rows
    that count; NaN when none does, as ``cross_entropy``) or "sum", (M,) for "none"; with
    ``return_correct`` also correct (M,) bool. A row is correct when its positive scores
    strictly above every kept negative and no kept negative equals the positive (by index
    or value: a tie); with ``correct_on_tie`` when it scores at or above them (a tie counts,
    as an argmax that prefers the positive: CPC_audio, SpeechBrain); with
    ``correct_on_tie="unless_all_tie"`` when it is the argmax and not also the argmin of the
    N + 1 logits, masked negatives counting at -inf (fairseq's ``Wav2vecCriterion``): a tie
    counts unless every candidate ties, e.g. a zero query. That rule scores the rows a second
    time with the negated queries (without gradient; negation is exact in floating point, so
    "the positive is the argmin" is the kernels' own comparison) and, for the few rows where
    both hold, checks for masked negatives: a device sync (and a graph break under
    ``torch.compile``) that the other rules do not have. ``deterministic=True`` makes the
    fused d_keys independent of thread timing (no atomics; slower, see kernels/README.md);
    None (the default) follows ``torch.use_deterministic_algorithms``.
    ``check_indices=False`` skips the range check (and its device sync) on the fused
    backend: rows with an out-of-range index then get a NaN loss.
    """
    check_float("queries", queries, 2)
    check_float("keys", keys, 2)
    M, D = queries.shape
    if keys.shape[1] != D:
        raise UserInputError(f"`queries` have D={D} but `keys` have D={keys.shape[1]}")
    if M == 0:
        raise UserInputError("`queries` must hold at least one row")
    check_same_device(queries, keys=keys, pos_index=pos_index, neg_index=neg_index)
    check_index("pos_index", pos_index, (M,))
    check_index("neg_index", neg_index, (M, None))
    _check_options(temperature, reduction, similarity, mask_duplicates)
    _check_tie_rule(correct_on_tie)
    if correct_on_tie == UNLESS_ALL_TIE:
        scoring = {
            "temperature": temperature,
            "similarity": similarity,
            "mask_duplicates": mask_duplicates,
            "backend": backend,
        }
        loss, top = info_nce(
            queries,
            keys,
            pos_index,
            neg_index,
            reduction=reduction,
            correct_on_tie=True,
            deterministic=deterministic,
            return_correct=True,
            check_indices=check_indices,
            **scoring,
        )
        if not return_correct:
            return loss
        return loss, top & ~_positive_is_argmin(queries, keys, pos_index, neg_index, top, scoring)

    if resolve_backend(backend, queries, keys) == "fused":
        fused = fused_ops()
        options = fused.FusedOptions(
            neg_index.shape[1],
            1.0 / temperature,
            cosine=similarity == "cosine",
            mask=mask_duplicates,
            correct_on_tie=correct_on_tie,
            deterministic=follow_deterministic(deterministic),
            check_indices=op_checks_indices(pos_index, neg_index, keys.shape[0], check_indices),
        )
        # The grid (1, 1, M) over keys (1, Nk, D); the op calls the launcher, which launches.
        rows, correct, _ = fused.fused_info_nce(
            queries[None, None],
            row_major(keys)[None],
            pos_index[None, None],
            neg_index[None, None],
            None,
            *options,
        )
        rows, correct = rows.view(M), correct.view(M)
    else:
        rows, correct = info_nce_rows_reference(
            queries,
            keys,
            pos_index,
            neg_index,
            temperature,
            similarity=similarity,
            mask_duplicates=mask_duplicates,
            correct_on_tie=correct_on_tie,
        )
    if reduction == "mean":
        loss = rows.sum() / (pos_index != IGNORE_INDEX).sum().to(rows.dtype)
    else:
        loss = rows.sum() if reduction == "sum" else rows
    return (loss, correct) if return_correct else loss


def _positive_is_argmin(
    queries: torch.Tensor,
    keys: torch.Tensor,
    pos_index: torch.Tensor,
    neg_index: torch.Tensor,
    top: torch.Tensor,
    scoring: dict[str, Any],
) -> torch.Tensor:
    """(M,) bool: among the rows ``top`` (the positive's logit at or above every other), those
    where it is also at or below every other of the N + 1, masked negatives counting at -inf
    (so a row with one never is): the rows whose candidates all tie."""
    with torch.no_grad():
        # Negated queries negate every score exactly: "-s_0 >= every kept -s_j" is
        # "s_0 <= every kept s_j", decided by the same kernels with the same rounding.
        _, low = info_nce(
            -queries.detach(),
            keys.detach(),
            pos_index,
            neg_index,
            reduction="none",
            correct_on_tie=True,
            return_correct=True,
            check_indices=False,  # checked by the first pass
            **scoring,
        )
        both = top & low
        mode = scoring["mask_duplicates"]
        if mode == "none":
            return both
        rows = both.nonzero().squeeze(1)  # a device sync; few rows, usually none
        neg, pos = neg_index[rows].long(), pos_index[rows].long().unsqueeze(1)
        if mode == "index":
            masked = (neg == pos).any(1)
        else:
            masked = (keys[neg] == keys[pos]).all(-1).any(1)
        return both.index_put((rows,), ~masked)


def _check_tie_rule(correct_on_tie: bool | str) -> None:
    if not isinstance(correct_on_tie, bool) and correct_on_tie != UNLESS_ALL_TIE:
        raise UserInputError(
            f"`correct_on_tie` must be False, True or {UNLESS_ALL_TIE!r}, got {correct_on_tie!r}"
        )


def _check_options(temperature: float, reduction: str, similarity: str, mask: str) -> None:
    check_temperature(temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("mask_duplicates", mask, MASK_DUPLICATES)


def _keyword_options(fn, given: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """Checks that ``given`` names keyword parameters of ``fn`` (a misspelt option fails at
    construction, not at the first call)."""
    allowed = set(inspect.signature(fn).parameters) - set(skip)
    unknown = sorted(set(given) - allowed)
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        raise UserInputError(f"unknown option(s) {names}: {fn.__name__} takes {sorted(allowed)}")
    return given


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce`: forward(queries, keys, pos_index, neg_index).

    InfoNCELoss(temperature=1.0, reduction="mean", **options): ``options`` are
    :func:`info_nce`'s keyword arguments (similarity, mask_duplicates, correct_on_tie,
    backend, deterministic, check_indices), checked here."""

    def __init__(self, temperature: float = 1.0, reduction: str = "mean", **options: Any) -> None:
        super().__init__()
        skip = ("queries", "keys", "pos_index", "neg_index", "return_correct")
        self.options = _keyword_options(
            info_nce, {"temperature": temperature, "reduction": reduction, **options}, skip
        )
        _check_options(
            temperature,
            reduction,
            options.get("similarity", "dot"),
            options.get("mask_duplicates", "none"),
        )
        _check_tie_rule(options.get("correct_on_tie", False))

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        pos_index: torch.Tensor,
        neg_index: torch.Tensor,
    ) -> torch.Tensor:
        return info_nce(queries, keys, pos_index, neg_index, **self.options)


class CPCInfoNCELoss(nn.Module):
    """Module form of :func:`cpc_info_nce`: forward(predictions, z, neg_index=None,
    generator=None, seed=None).

    CPCInfoNCELoss(num_negatives=50, temperature=1.0, exclude_positive=False, **options):
    ``options`` are :func:`cpc_info_nce`'s other keyword arguments (backend, deterministic,
    design, check_indices, negatives_from, share_negatives_across_steps, correct_on_tie)."""

    def __init__(
        self,
        num_negatives: int = 50,
        temperature: float = 1.0,
        exclude_positive: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        given = {
            "num_negatives": num_negatives,
            "temperature": temperature,
            "exclude_positive": exclude_positive,
            **options,
        }
        skip = ("predictions", "z", "neg_index", "generator", "seed")
        self.options = _keyword_options(cpc_info_nce, given, skip)

    def forward(
        self,
        predictions: torch.Tensor,
        z: torch.Tensor,
        neg_index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | torch.Tensor | None = None,
    ) -> CPCInfoNCEOutput:
        return cpc_info_nce(
            predictions, z, neg_index=neg_index, generator=generator, seed=seed, **self.options
        )
