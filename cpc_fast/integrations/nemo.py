"""NeMo's self-supervised ``ContrastiveLoss`` over :func:`cpc_fast.info_nce`, and its sampler.

NeMo (``nemo.collections.asr.losses.ssl_losses.contrastive.ContrastiveLoss``) takes the
spectrogram (B, C, T), the spectrogram after masking's mask (B, C, T) and the decoder's
output (B, T', D); it pads the time axis to a multiple of T', folds it into T' steps of
``combine_time_steps`` frames, projects each step's frames with ``target_proj`` (a Linear
to ``proj_dim``), calls a step masked when more than ``mask_threshold`` of its mask is set,
and scores each masked step's decoder output against its target and ``num_negatives``
targets drawn *without replacement* by ``torch.multinomial``: among the masked steps of the
same utterance (``sample_from_same_utterance_only``, the default) or of the whole batch,
or among all steps (``sample_from_non_masked``); the row's own step can be drawn, and a
negative equal to the target in every component gets -inf. Logits are cosine /
``logit_temp`` (0.1); the cross-entropy with target 0 is reduced by ``reduce`` ("sum") and
scaled by ``multiplier / B`` (16 / B). It reports no accuracy.

:class:`ContrastiveLoss` takes the same constructor arguments (``target_proj`` under the
same name, so a NeMo checkpoint's loss weights load) and forward inputs and returns the same
loss; the draws come from :func:`sample_negative_indices` on the device, the loss from
:func:`cpc_fast.info_nce` (fused Triton kernels on CUDA) over indices into the projected
targets, never a gathered (N, T', B, D) negatives tensor. Quantized targets
(``quantized_targets``, ``sample_from_codebook``, ``group_loss``) need NeMo's Gumbel
quantizer and are not offered. Numerics: NeMo rounds the cosine to the decoder's dtype
before dividing by the temperature; here the logits stay float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpc_fast.errors import UserInputError
from cpc_fast.losses._checks import check_choice, check_float
from cpc_fast.losses.info_nce import info_nce

REDUCE = ("sum", "mean", "none")
# Rows per chunk of the sampler's random keys: about this many float64 keys at a time.
_KEYS_PER_CHUNK = 1 << 22


def sample_negative_indices(
    mask: Tensor,
    num_negatives: int,
    *,
    same_utterance: bool = True,
    from_unmasked: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """NeMo's ``sample_negatives`` draws, on the mask's device: (M, N) int64 flat indices into
    the B·T steps, one row per masked step (M = mask.sum(), in (b, t) order).

    mask (B, T) bool: the masked steps. Each row draws N *distinct* steps (without
    replacement), uniformly among its candidates: the masked steps of its own utterance
    (``same_utterance``) or of the whole batch, or with ``from_unmasked`` every step of the
    utterance or batch (what NeMo's ``sample_from_non_masked`` draws: all steps, masked
    ones included). The row's own step is a candidate, as in NeMo (the loss masks it by
    value). Every row needs at least N candidates.

    Where NeMo's draws differ: in same-utterance mode it draws one set of step numbers per
    row position t' and uses it for *every* utterance (rows (t', b) of all b share their
    draws); here every row draws independently. NeMo also folds the masked steps into a
    (B, -1) tensor, which needs equal counts per utterance (unequal ones fail, or when the
    total divides by B, silently shift steps into the wrong utterance); here each utterance
    draws among its own masked steps, whatever their number.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise UserInputError("`mask` must be a (B, T) tensor of masked steps")
    if num_negatives < 1:
        raise UserInputError(f"`num_negatives` must be >= 1, got {num_negatives}")
    mask = mask.bool()
    B, T = mask.shape
    rows = mask.reshape(-1).nonzero().squeeze(1)  # (M,) flat b·T + t of the masked steps
    if rows.numel() == 0:
        raise UserInputError("`mask` has no masked step: there is no row to draw for")
    candidates = torch.ones_like(mask) if from_unmasked else mask  # (B, T)
    if same_utterance:
        fewest = int(candidates.sum(1)[mask.any(1)].min())  # one device sync
        width, offset = T, rows // T * T  # keys over the row's own utterance
    else:
        fewest = int(candidates.sum())
        width, offset = B * T, torch.zeros_like(rows)
    if fewest < num_negatives:
        where = "an utterance" if same_utterance else "the batch"
        raise UserInputError(
            f"`num_negatives`={num_negatives} distinct draws need as many candidate steps, "
            f"but {where} has only {fewest}"
        )
    chunk = max(1, _KEYS_PER_CHUNK // width)
    out = []
    for start in range(0, rows.numel(), chunk):
        part = rows[start : start + chunk]
        allowed = (
            candidates[part // T]
            if same_utterance
            else candidates.reshape(1, -1).expand(part.numel(), -1)
        )  # (m, width)
        # The N largest of i.i.d. uniform keys are a uniformly random N-subset; float64
        # keys make a tie across the subset's edge (a bias towards one index) negligible.
        keys = torch.rand(
            allowed.shape, dtype=torch.float64, device=mask.device, generator=generator
        )
        keys = keys.masked_fill(~allowed, -1.0)
        out.append(keys.topk(num_negatives, dim=1).indices + offset[start : start + chunk, None])
    return torch.cat(out)


class ContrastiveLoss(nn.Module):
    """NeMo's ``ContrastiveLoss`` (same constructor arguments, without quantized targets);
    forward(spectrograms (B, C, T), spec_masks (B, C, T), decoder_outputs (B, T', D),
    decoder_lengths=None) -> the loss: a scalar for ``reduce`` "sum"/"mean", (M,) per
    masked step for "none" (NeMo's row order), times ``multiplier / B``.

    ``backend`` (keyword only, not NeMo's) as for :func:`cpc_fast.info_nce`;
    ``forward(..., generator=)`` makes the draws reproducible. ``decoder_lengths`` is
    accepted and not read, as in NeMo (padded steps count when their mask is set).
    """

    def __init__(
        self,
        in_dim: int,
        proj_dim: int = 128,
        combine_time_steps: int = 1,
        num_negatives: int = 100,
        quantized_targets: bool = False,
        codebook_size: int = 320,
        prob_ppl_weight: float = 0.1,
        logit_temp: float = 0.1,
        reduce: str = "sum",
        sample_from_same_utterance_only: bool = True,
        sample_from_non_masked: bool = False,
        sample_from_codebook: bool = False,
        group_loss: bool = False,
        num_groups: int = 2,
        quantizer_temp_start: float = 2,
        quantizer_temp_min: float = 0.5,
        quantizer_temp_decay: float = 0.999995,
        mask_threshold: float = 0.8,
        store_ids: bool = True,
        reduce_ids: bool = False,
        multiplier: float = 16.0,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("quantized_targets", quantized_targets),
            ("sample_from_codebook", sample_from_codebook),
            ("group_loss", group_loss),
        ):
            if value:
                raise UserInputError(
                    f"`{name}=True` needs NeMo's Gumbel quantizer, which cpc-fast does not "
                    "offer: use NeMo's own ContrastiveLoss for quantized targets"
                )
        check_choice("reduce", reduce, REDUCE)
        if num_negatives < 1:
            raise UserInputError(f"`num_negatives` must be >= 1, got {num_negatives}")
        if not logit_temp > 0:
            raise UserInputError(f"`logit_temp` must be positive, got {logit_temp}")
        self.target_proj = nn.Linear(in_dim * combine_time_steps, proj_dim)
        self.num_negatives = num_negatives
        self.logit_temp = logit_temp
        self.reduce = reduce
        self.combine_time_steps = combine_time_steps
        self.sample_from_same_utterance_only = sample_from_same_utterance_only
        self.sample_from_non_masked = sample_from_non_masked
        self.mask_threshold = mask_threshold
        self.multiplier = multiplier
        self.backend = backend

    def forward(
        self,
        spectrograms: Tensor,
        spec_masks: Tensor,
        decoder_outputs: Tensor,
        decoder_lengths: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        check_float("spectrograms", spectrograms, 3)
        check_float("decoder_outputs", decoder_outputs, 3)
        if not isinstance(spec_masks, Tensor) or spec_masks.shape != spectrograms.shape:
            got = tuple(spec_masks.shape) if isinstance(spec_masks, Tensor) else spec_masks
            raise UserInputError(
                f"`spec_masks` must have the spectrograms' shape {tuple(spectrograms.shape)}, "
                f"got {got}"
            )
        B, steps, _ = decoder_outputs.shape
        if spectrograms.shape[0] != B:
            raise UserInputError(
                f"`decoder_outputs` has B={B} but `spectrograms` has {spectrograms.shape[0]}"
            )
        targets, step_mask = self._targets(spectrograms, spec_masks, steps)  # (B, T', P), (B, T')
        if targets.shape[2] != decoder_outputs.shape[2]:
            raise UserInputError(
                f"`decoder_outputs` must have proj_dim={targets.shape[2]} channels, got "
                f"{decoder_outputs.shape[2]}"
            )
        neg = sample_negative_indices(
            step_mask,
            self.num_negatives,
            same_utterance=self.sample_from_same_utterance_only,
            from_unmasked=self.sample_from_non_masked,
            generator=generator,
        )
        rows = step_mask.reshape(-1).nonzero().squeeze(1)  # (M,) flat b·T' + t
        loss = info_nce(
            decoder_outputs.reshape(B * steps, -1)[rows],
            targets.reshape(B * steps, -1),
            rows,
            neg,
            self.logit_temp,
            self.reduce,
            similarity="cosine",
            mask_duplicates="value",
            backend=self.backend,
        )
        if self.reduce == "none" and self.sample_from_same_utterance_only:
            loss = loss[_time_major(step_mask)]
        return loss * (self.multiplier / B)

    def _targets(self, spectrograms: Tensor, spec_masks: Tensor, steps: int):
        """(B, C, T) -> projected targets (B, T', proj_dim) and the masked steps (B, T')."""
        targets = spectrograms.transpose(-2, -1)  # (B, T, C)
        masks = spec_masks.transpose(-2, -1).float()  # NeMo's are float; bool works too
        T = targets.shape[1]
        pad = math.ceil(T / steps) * steps - T  # NeMo pads the time axis to a multiple of T'
        if pad > 0:
            targets = F.pad(targets, (0, 0, 0, pad))
            masks = F.pad(masks, (0, 0, 0, pad))
        B = targets.shape[0]
        targets = targets.reshape(B, steps, -1)  # (B, T', frames per step · C)
        masks = masks.reshape(B, steps, -1)
        if targets.shape[2] != self.target_proj.in_features:
            raise UserInputError(
                f"a step folds {targets.shape[2] // spectrograms.shape[1]} spectrogram frames of "
                f"{spectrograms.shape[1]} channels, but `in_dim` * `combine_time_steps` = "
                f"{self.target_proj.in_features}"
            )
        return self.target_proj(targets), masks.mean(-1) > self.mask_threshold


def _time_major(step_mask: Tensor) -> Tensor:
    """(M,) positions that order the (b, t) rows as NeMo's same-utterance mode does: by the
    rank t' of the step among its utterance's masked steps, then by b. Needs equal counts
    per utterance (NeMo's own condition)."""
    counts = step_mask.sum(1)
    if bool((counts != counts[0]).any()):
        raise UserInputError(
            "`reduce='none'` orders the rows as NeMo does, which needs the same number of "
            f"masked steps in every utterance of `spec_masks`, got {counts.tolist()}"
        )
    B, per = step_mask.shape[0], int(counts[0])
    return torch.arange(B * per, device=step_mask.device).view(B, per).t().reshape(-1)
