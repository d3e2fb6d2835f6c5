"""wav2vec 2.0's contrastive loss and negative sampler, with Hugging Face's shapes.

``transformers.Wav2Vec2ForPreTraining`` computes, for every masked frame (b, t), logits
cos(c_bt, [q_bt; q_n1 .. q_nN]) / κ (κ = ``contrastive_logits_temperature``, 0.1) between
the projected context ``projected_states`` and the projected quantized targets
``projected_quantized_states``, sets a negative that equals the positive target in every
component to -inf, and sums the cross-entropy with target 0 over the masked frames. Its
negatives come from ``_sample_negative_indices``, a NumPy loop on the CPU: N per frame,
uniform over the *other* masked frames of the same utterance, as flat indices into B·L.
fairseq's ``wav2vec2.py`` (``cross_sample_negatives=0``) computes the same loss.

Here the same loss runs through :func:`cpc_fast.info_nce` (cosine similarity, value
masking; fused Triton kernels on CUDA, which never build the (frames, N + 1, D) candidate
tensor that Hugging Face's loss gathers), and the same sampling runs on the tensors' device
(:func:`cpc_fast.losses.negatives.masked_negatives`)::

    out = model(input_values, mask_time_indices=mask)  # no sampled_negative_indices
    neg = sample_negative_indices(mask, model.config.num_negatives)
    loss = contrastive_loss(out.projected_states, out.projected_quantized_states, mask, neg,
                            model.config.contrastive_logits_temperature)

Numerics: Hugging Face rounds the logits to the model's dtype before the cross-entropy; here
scores stay float32 (identical for a float32 model, more accurate for a half one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cpc_fast.errors import UserInputError
from cpc_fast.losses._checks import check_float, check_index
from cpc_fast.losses.info_nce import IGNORE_INDEX, info_nce
from cpc_fast.losses.negatives import check_index_range, masked_negatives


def sample_negative_indices(
    mask_time_indices: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hugging Face's ``_sample_negative_indices`` on the mask's device.

    mask_time_indices (B, L) bool (or 0/1 integers) -> (B, L, N) int64 flat indices into
    B·L: for each masked frame, N frames drawn uniformly (with replacement) among the other
    masked frames of its own utterance, never the frame itself. Unmasked frames get their
    utterance's first frame, as Hugging Face's do (the loss ignores them). Every row needs at
    least two masked frames.
    """
    frames = masked_negatives(mask_time_indices, num_negatives, generator=generator)
    B, L = mask_time_indices.shape
    return frames + torch.arange(B, device=frames.device).view(B, 1, 1) * L


def contrastive_loss(
    projected_states: Tensor,
    projected_quantized_states: Tensor,
    mask_time_indices: Tensor,
    sampled_negative_indices: Tensor,
    temperature: float = 0.1,
    reduction: str = "sum",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``Wav2Vec2ForPreTraining``'s contrastive loss (no diversity term).

    projected_states (B, L, D), projected_quantized_states (B, L, D), mask_time_indices
    (B, L) bool (or 0/1), sampled_negative_indices (B, L, N) flat indices into B·L (as
    :func:`sample_negative_indices` or Hugging Face's sampler give them). Returns the
    cross-entropy summed ("sum", Hugging Face's) or averaged ("mean") over the masked frames,
    or (B, L) per frame ("none", 0 on unmasked frames); float32 (float64 for float64 inputs).
    Every row of the mask needs a masked frame. ``backend`` as for :func:`cpc_fast.info_nce`.
    """
    B, L, D, N = _check_shapes(
        projected_states, projected_quantized_states, mask_time_indices, sampled_negative_indices
    )
    # The value checks read tensors on the host; a compiled graph leaves the index range to
    # the loss's own op (which names it `neg_index`) and cannot raise for an empty row.
    compiled = torch.compiler.is_compiling()
    if not compiled:
        _check_values(mask_time_indices, sampled_negative_indices, B * L)
    mask = mask_time_indices.bool().reshape(B * L)
    rows = torch.arange(B * L, device=mask.device)
    pos = torch.where(mask, rows, IGNORE_INDEX)  # unmasked frames drop out
    neg = sampled_negative_indices.reshape(B * L, N)
    loss = info_nce(
        projected_states.reshape(B * L, D),
        projected_quantized_states.reshape(B * L, D),
        pos,
        neg,
        temperature,
        reduction,
        similarity="cosine",
        mask_duplicates="value",
        backend=backend,
        check_indices=compiled,  # eager: checked above, naming the caller's argument
    )
    return loss.view(B, L) if reduction == "none" else loss


def _check_shapes(states, quantized, mask, negatives) -> tuple[int, int, int, int]:
    """B, L, D, N of Hugging Face's tensors, after one clear error for any mismatch."""
    check_float("projected_states", states, 3)
    check_float("projected_quantized_states", quantized, 3)
    B, L, D = states.shape
    if tuple(quantized.shape) != (B, L, D):
        raise UserInputError(
            f"`projected_quantized_states` must have shape {(B, L, D)} like "
            f"`projected_states`, got {tuple(quantized.shape)}"
        )
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, L):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise UserInputError(f"`mask_time_indices` must have shape {(B, L)}, got {got}")
    check_index("sampled_negative_indices", negatives, (B, L, None))
    return B, L, D, negatives.shape[2]


def _check_values(mask: torch.Tensor, negatives: torch.Tensor, frames: int) -> None:
    """Every row of the mask has a masked frame; every negative index lies in [0, B·L)."""
    empty = ~mask.bool().any(1)
    if bool(empty.any()):  # one device sync, and one for the range check below
        raise UserInputError(
            f"`mask_time_indices` row {int(empty.nonzero()[0])} has no masked frame: every "
            "utterance of the batch needs at least one"
        )
    check_index_range(negatives, frames, "sampled_negative_indices")
