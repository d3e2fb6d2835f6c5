"""The ``joint`` setup's model: a CPC model and the recognizer trained end to end from audio.

    wave (B, T) --CPC--> z (B, L, D_z), c (B, L, D_c), predictions (B, K, L, D_z)
    loss = CCC loss(recognizer(c, frames)) + λ · InfoNCE over the VALID frames only

The InfoNCE over a zero-padded, variable-length batch is
:func:`cpc_fast.losses.padded_info_nce.masked_cpc_info_nce`.
"""

from __future__ import annotations

import torch
from torch import nn

from cpc_fast.models.recognizer import EmotionRecognizer


class JointModel(nn.Module):
    """A CPC model feeding the recognizer; both trained together.

    ``forward(wave (B, T), lengths (B,) samples)`` -> (predictions (B, 3), CPCOutput).
    """

    def __init__(self, cpc: nn.Module, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.cpc = cpc
        self.recognizer = recognizer

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor):
        out = self.cpc(wave)
        frames = torch.clamp(lengths // self.cpc.frame_hop, max=out.c.shape[1])
        return self.recognizer(out.c, frames), out


__all__ = ["JointModel"]
