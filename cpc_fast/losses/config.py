"""The CPC loss's settings: one object, built once from the run's configuration and passed to
every loss call (the training step, validation, the joint setup's padded form).

They were part of the model's config (:class:`~cpc_fast.models.cpc.CPCConfig`) before; a
run record or model file written then still loads: ``CPCConfig.upgrade`` drops them from a
model's record, ``PretrainConfig.upgrade`` moves them into the run's ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from cpc_fast.losses.cpc import CPCInfoNCEOutput, cpc_info_nce
from cpc_fast.losses.padded_info_nce import masked_cpc_info_nce
from cpc_fast.settings import Config, at_least, positive, setting


@dataclass
class LossConfig(Config):
    """CPC's InfoNCE as the paper trains it (Li et al. 2021, eq. 2); defaults are the paper's."""

    num_negatives: int = setting(
        50,
        flag=True,
        check=at_least(1),
        help="Negatives per prediction, drawn uniformly from the same utterance, fresh for "
        "every step.",
    )
    temperature: float = setting(
        1.0, flag=True, check=positive, help="τ: the scores are divided by it."
    )
    exclude_positive: bool = setting(
        False,
        flag=True,
        help="Draw the negatives from the frames other than the positive (the paper and "
        "CPC_audio may draw the positive's own frame, which counts as a negative).",
    )

    def cpc(
        self,
        predictions: torch.Tensor,
        z: torch.Tensor,
        *,
        seed: int | torch.Tensor | None = None,
        neg_index: torch.Tensor | None = None,
    ) -> CPCInfoNCEOutput:
        """:func:`~cpc_fast.losses.cpc.cpc_info_nce` of predictions (B, K, T, D) against
        z (B, L, D) with these settings; negatives from ``neg_index`` (B, K, T, N) when
        given, else drawn from ``seed``."""
        return cpc_info_nce(
            predictions,
            z,
            num_negatives=self.num_negatives,
            temperature=self.temperature,
            neg_index=neg_index,
            seed=None if neg_index is not None else seed,
            exclude_positive=self.exclude_positive,
        )

    def padded(
        self,
        predictions: torch.Tensor,
        z: torch.Tensor,
        frame_lengths: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:func:`~cpc_fast.losses.padded_info_nce.masked_cpc_info_nce` over the valid frames
        (``frame_lengths`` (B,)) of a zero-padded batch, with these settings: the () mean."""
        return masked_cpc_info_nce(
            predictions,
            z,
            frame_lengths,
            self.num_negatives,
            self.temperature,
            exclude_positive=self.exclude_positive,
            generator=generator,
        )


# The names a record of the earlier layout carries in its model's config.
LOSS_FIELDS = tuple(f.name for f in fields(LossConfig))

__all__ = ["LOSS_FIELDS", "LossConfig"]
