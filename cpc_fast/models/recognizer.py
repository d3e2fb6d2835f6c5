"""The paper's attention-based emotion recognizer (Li et al. 2021, Sec. 4.1).

    features (B, L, D_in) --MHSA, 8 heads x 64--> U (B, L, D_in)
        --mean and std over the valid frames--> u (B, 2 D_in)
        --dense 128, ReLU, dropout 0.2, dense 128, ReLU, dropout 0.2--> (B, 128)
        --linear--> (B, 3) = (activation, valence, dominance)

D_in is 256 for CPC contexts and 40 for LFBE. Choices where the paper is silent:

* Q, K, V are linear maps D_in -> 512 with bias; W_O maps 512 -> D_in (the paper: "the outputs
  of the attention layer have the same dimension as the inputs").
* Padded frames are masked out as attention keys and excluded from the statistics, so a
  batch's padding never changes an utterance's output.
* std is the population standard deviation over the valid frames, sqrt(var + 1e-5): it stays
  defined (and differentiable) for a one-frame utterance.
* "We apply a dropout after these two dense layers": one dropout after each dense layer.
* ``input_mean`` / ``input_std`` are fixed buffers (identity by default) that standardise the
  input features per dimension. Experiments set them from the training split's frames (LFBE,
  frozen CPC contexts; for ``joint``, the freshly initialised CPC's contexts), so a saved
  model carries its own normalisation. Without it, CPC contexts, whose utterance means vary
  by about 1 % of their range, leave the recognizer's outputs nearly constant for many
  epochs (CCC ≈ 0 after 10 epochs on the tiny synthetic corpus).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpc_fast.errors import UserInputError
from cpc_fast.settings import Config, at_least, in_range, positive, setting


@dataclass
class RecognizerConfig(Config):
    """Sizes; every default is the paper's (Sec. 6.1)."""

    input_dim: int = setting(
        256, check=at_least(1), help="D_in: feature channels (256 CPC contexts, 40 LFBE)."
    )
    num_heads: int = setting(8, check=at_least(1), help="Attention heads.")
    attention_dim: int = setting(512, check=at_least(1), help="Q, K, V width, all heads.")
    hidden_dim: int = setting(128, check=at_least(1), help="Width of the two dense layers.")
    dropout: float = setting(0.2, check=in_range(0.0, 1.0), help="After each dense layer.")
    num_outputs: int = setting(3, check=at_least(1), help="Activation, valence, dominance.")
    std_eps: float = setting(
        1e-5, check=positive, help="Added to the variance of the pooled std (one frame too)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_whole()  # a model config is complete when made: check it whole at once

    def check_whole(self) -> None:
        if self.attention_dim % self.num_heads:
            raise UserInputError(
                f"`attention_dim` {self.attention_dim} is not divisible by {self.num_heads} "
                "heads (`num_heads`)"
            )


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) frame counts -> (B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with padded keys masked: (B, L, D) -> (B, L, D)."""

    def __init__(self, input_dim: int, num_heads: int, attention_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        self.qkv = nn.Linear(input_dim, 3 * attention_dim)
        self.out = nn.Linear(attention_dim, input_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = (
            self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # each (B, H, L, D_attn)
        keys = mask[:, None, None, :]  # (B, 1, 1, L): every query sees only valid keys
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)  # (B, H, L, D_attn)
        return self.out(h.transpose(1, 2).reshape(B, L, -1))  # (B, L, D)


def masked_mean_std(
    x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of (B, L, D) over the valid frames of ``mask`` (B, L).

    Returns (B, D), (B, D); std = sqrt(var + eps).
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    count = m.sum(dim=1).clamp_min(1.0)  # (B, 1)
    mean = (x * m).sum(dim=1) / count
    dev = (x - mean.unsqueeze(1)) * m
    var = (dev * dev).sum(dim=1) / count
    return mean, torch.sqrt(var + eps)


class EmotionRecognizer(nn.Module):
    """(features (B, L, D_in), frame lengths (B,)) -> (B, 3) activation, valence, dominance."""

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or RecognizerConfig()
        cfg = self.config
        self.register_buffer("input_mean", torch.zeros(cfg.input_dim))
        self.register_buffer("input_std", torch.ones(cfg.input_dim))
        self.attention = MultiHeadSelfAttention(cfg.input_dim, cfg.num_heads, cfg.attention_dim)
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.input_dim, cfg.hidden_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
        )
        self.output = nn.Linear(cfg.hidden_dim, cfg.num_outputs)

    def set_input_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs as (x − mean) / std, each (D_in,)."""
        if std.le(0).any():
            raise ValueError("input_std must be positive")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def embed(
        self, features: torch.Tensor, lengths: torch.Tensor, *, check: bool = True
    ) -> torch.Tensor:
        """The utterance representation u = [mean(U); std(U)]: (B, L, D_in) -> (B, 2 D_in).

        ``check=False`` skips the checks of the lengths' values, which read the tensor: a
        traced graph (ONNX export) cannot hold them.
        """
        if features.dim() != 3 or features.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"expected features (B, L, {self.config.input_dim}), got {tuple(features.shape)}"
            )
        if lengths.shape != features.shape[:1]:
            raise ValueError(
                f"lengths {tuple(lengths.shape)} do not match batch {features.shape[0]}"
            )
        if check and (lengths.min() < 1 or lengths.max() > features.shape[1]):
            raise ValueError(f"frame lengths must be in [1, {features.shape[1]}]")
        mask = frame_mask(lengths, features.shape[1])  # (B, L)
        x = (features - self.input_mean) / self.input_std
        u = self.attention(x, mask)  # (B, L, D_in)
        mean, std = masked_mean_std(u, mask, self.config.std_eps)
        return torch.cat([mean, std], dim=-1)  # (B, 2 D_in)

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, *, check: bool = True
    ) -> torch.Tensor:
        return self.output(self.head(self.embed(features, lengths, check=check)))  # (B, 3)


__all__ = [
    "EmotionRecognizer",
    "MultiHeadSelfAttention",
    "RecognizerConfig",
    "frame_mask",
    "masked_mean_std",
]
