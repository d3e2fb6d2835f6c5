"""The CPC model of the paper: conv encoder f, GRU context network g, linear predictors h_k.

Shapes (paper defaults): wave (B, T) at 16 kHz -> z (B, L, 128) with L = floor(T / 160)
-> c (B, L, 256) -> predictions (B, K=12, L, 128), where predictions[:, k, t] = W_k c_t
predicts z[:, t + k + 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cpc_fast.errors import UserInputError
from cpc_fast.io.checkpoint import WEIGHTS_NAME, load_weights, save_weights
from cpc_fast.losses.config import LOSS_FIELDS
from cpc_fast.models.block_conv import conv_pads, two_block_conv
from cpc_fast.models.hub import HubMixin, cpc_card, read_hub_config, write_hub_config
from cpc_fast.settings import Config, at_least, one_of, setting

ENCODER_NORMS = ("none", "channel")
CPC_KIND = "cpc"  # the "kind" in a CPC weights file's metadata
HUB_MODEL_TYPE = "cpc-fast-cpc"  # the "model_type" of an exported CPC folder's config.json


def _conv_sizes(value: tuple[int, ...]) -> str | None:
    return (
        None
        if value and min(value) >= 1
        else f"must be a non-empty list of sizes >= 1, got {value}"
    )


@dataclass
class CPCConfig(Config):
    """Model sizes; every default is the paper's (Li et al. 2021, Sec. 6.1). The loss's
    settings are :class:`~cpc_fast.losses.config.LossConfig`."""

    encoder_dim: int = setting(
        128, flag=True, check=at_least(1), help="Channels of the encoder's latents z."
    )
    strides: tuple[int, ...] = setting(
        (5, 4, 4, 2), check=_conv_sizes, help="The encoder convolutions' strides."
    )
    kernel_sizes: tuple[int, ...] = setting(
        (10, 8, 8, 4), check=_conv_sizes, help="The encoder convolutions' kernel sizes."
    )
    context_dim: int = setting(
        256, flag=True, check=at_least(1), help="Units of the GRU, the contexts c."
    )
    prediction_steps: int = setting(
        12, flag=True, check=at_least(1), help="K: frames ahead predicted, one linear map each."
    )
    # Normalisation after each encoder convolution: "none" (the paper mentions none) or
    # "channel", the ChannelNorm of the CPC reference code (Riviere et al. 2020): each frame's
    # channels to zero mean and unit variance, then a learned per-channel affine map. It acts
    # on every frame alone, so the features of a frame never depend on the window around it.
    encoder_norm: str = setting(
        "none",
        flag=True,
        check=one_of(ENCODER_NORMS),
        help="After each encoder convolution: none (the paper) or channel (each frame's "
        "channels normalised, as the CPC reference code).",
    )
    sample_rate: int = setting(16000, check=at_least(1), help="Samples per second of the input.")

    def __post_init__(self) -> None:
        self.strides = tuple(int(s) for s in self.strides)
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        super().__post_init__()
        self.check_whole()  # a model config is complete when made: check it whole at once

    def check_whole(self) -> None:
        if len(self.strides) != len(self.kernel_sizes):
            raise UserInputError("`strides` and `kernel_sizes` must be equally long")
        for s, k in zip(self.strides, self.kernel_sizes, strict=True):
            if k < s:
                raise UserInputError(f"each conv layer needs kernel >= stride (got {k}, {s})")

    @classmethod
    def upgrade(cls, record: dict[str, Any]) -> dict[str, Any]:
        # Model files and run records written before the loss had its own config carry its
        # settings here; a model does not need them.
        for name in LOSS_FIELDS:
            record.pop(name, None)
        return record

    @property
    def frame_hop(self) -> int:
        """Samples per latent frame (160 = 10 ms at 16 kHz for the paper's strides)."""
        return math.prod(self.strides)


class ChannelNorm(nn.Module):
    """Normalises the C channels of each frame of (B, C, L), then a learned affine map.

    The statistics are per (b, t), never across frames: a frame's output does not depend on
    the length or content of the window it sits in. Computed as ``layer_norm`` over the
    channel axis of the (B, L, C) view: one fused kernel instead of strided reductions
    (about 2x faster on a CPU, forward and backward).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frames(x.transpose(1, 2)).transpose(1, 2)  # (B, C, L)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """The same norm of frames laid out as (B, L, C)."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class CPCEncoder(nn.Module):
    """Strided 1-D convolutions with ReLU: (B, T) -> (B, L, encoder_dim), L = floor(T / hop).

    Each layer pads ``kernel - stride`` samples in total (more on the left when odd), which
    makes its output length exactly ``floor(input / stride)`` for every input length, so the
    frame count never depends on how T falls against the strides.

    On a CPU, when every kernel spans two strides (the paper's and both presets' encoders),
    the layers run as block GEMMs on (B, L, C) frames (:mod:`cpc_fast.models.block_conv`),
    faster there than convolutions; elsewhere (CUDA: cuDNN) as ``Conv1d`` on (B, C, L). Both
    compute the same function with the same parameters, up to float rounding.
    """

    def __init__(self, config: CPCConfig) -> None:
        super().__init__()
        self.pads = [
            conv_pads(k, s) for k, s in zip(config.kernel_sizes, config.strides, strict=True)
        ]
        self.blocks = all(
            k == 2 * s for k, s in zip(config.kernel_sizes, config.strides, strict=True)
        )
        convs, norms = [], []
        in_ch = 1
        for k, s in zip(config.kernel_sizes, config.strides, strict=True):
            convs.append(nn.Conv1d(in_ch, config.encoder_dim, kernel_size=k, stride=s))
            norms.append(
                ChannelNorm(config.encoder_dim)
                if config.encoder_norm == "channel"
                else nn.Identity()
            )
            in_ch = config.encoder_dim
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.hop = config.frame_hop

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, floor(T / hop), D). With ``lengths`` (B,) samples, a zero-padded
        batch: every layer's frames past a row's own count are zeroed, so that row b's first
        ``lengths[b] // hop`` frames are those of ``wave[b, :lengths[b]]`` run alone (each
        layer reads zeros past the end, as it pads a lone waveform)."""
        if wave.dim() != 2:
            raise UserInputError(f"expected wave of shape (B, T), got {tuple(wave.shape)}")
        if wave.shape[1] < self.hop:
            raise UserInputError(
                f"waveform of {wave.shape[1]} samples is shorter than one frame ({self.hop})"
            )
        # The block GEMM is an autograd Function with in-place writes, which a traced graph
        # (ONNX export) cannot hold; the Conv1d path computes the same with the same weights.
        if self.blocks and wave.device.type == "cpu" and not torch.jit.is_tracing():
            return self._blocks(wave, lengths)
        x = _zero_past(wave, lengths, 1).unsqueeze(1)  # (B, 1, T)
        for pad, conv, norm in zip(self.pads, self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(F.pad(x, pad))))
            lengths = None if lengths is None else lengths // conv.stride[0]
            x = _zero_past(x, lengths, 2)
        return x.transpose(1, 2)  # (B, L, D)

    def _blocks(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The same layers as block GEMMs on frames (B, L, C), from (B, T, 1) on."""
        x = _zero_past(wave, lengths, 1).unsqueeze(2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = two_block_conv(x, conv.weight, conv.bias, conv.stride[0])
            x = F.relu(norm.frames(x) if isinstance(norm, ChannelNorm) else x)
            lengths = None if lengths is None else lengths // conv.stride[0]
            x = _zero_past(x, lengths, 1)
        return x  # (B, L, D)


def _zero_past(x: torch.Tensor, lengths: torch.Tensor | None, axis: int) -> torch.Tensor:
    """``x`` with the positions of ``axis`` (time) at or past each row's length zeroed."""
    if lengths is None:
        return x
    valid = torch.arange(x.shape[axis], device=x.device) < lengths.unsqueeze(1)  # (B, L)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[axis] = x.shape[axis]
    return torch.where(valid.view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


class CPCOutput(NamedTuple):
    z: torch.Tensor  # (B, L, encoder_dim) latent frames
    c: torch.Tensor  # (B, L, context_dim) context vectors
    predictions: torch.Tensor  # (B, K, L, encoder_dim); [:, k, t] predicts z[:, t + k + 1]


class CPCModel(HubMixin, nn.Module):
    """Encoder f, unidirectional GRU g and K linear predictors h_k (no bias: ẑ = W_k c_t).

    ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``
    (:mod:`cpc_fast.models.hub`): a folder of ``model.safetensors`` (the file
    :func:`~cpc_fast.models.loading.save_cpc` writes), ``config.json`` and a model card;
    ``from_pretrained`` also reads a training run's folder. ``training_record`` is what the
    card says of the training (data, steps, validation, command), when known.
    """

    def __init__(self, config: CPCConfig | None = None) -> None:
        super().__init__()
        self.config = config or CPCConfig()
        self.training_record: dict[str, Any] | None = None
        cfg = self.config
        self.encoder = CPCEncoder(cfg)
        self.gru = nn.GRU(cfg.encoder_dim, cfg.context_dim, num_layers=1, batch_first=True)
        # The K predictors as one (K * D) x C matrix: one GEMM instead of K small ones.
        self.predictor = nn.Linear(
            cfg.context_dim, cfg.prediction_steps * cfg.encoder_dim, bias=False
        )

    @property
    def frame_hop(self) -> int:
        return self.config.frame_hop

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.frame_hop

    def encode(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) float waveform -> z (B, L, encoder_dim); ``lengths`` (B,) samples of a
        zero-padded batch (:meth:`CPCEncoder.forward`)."""
        return self.encoder(wave, lengths)

    def context(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) float waveform -> c (B, L, context_dim). With ``lengths``, each row's
        first ``lengths[b] // frame_hop`` contexts are those of the row alone (the GRU is
        causal: what follows a row's end never reaches them)."""
        return self.autoregress(self.encode(wave, lengths))

    def autoregress(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, encoder_dim) -> c (B, L, context_dim), the GRU over time.

        Under autocast the recurrence still runs in the weights' dtype (float32): its L
        sequential steps (1000 per 10 s) are latency-bound, so bf16 would save no time, and
        rounding error would accumulate along them.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.gru(z.to(self.gru.weight_ih_l0.dtype))[0]

    def predict(self, c: torch.Tensor) -> torch.Tensor:
        """c (B, L, C) -> predictions (B, K, L, D), a permuted view (not contiguous)."""
        B, L, _ = c.shape
        K, D = self.config.prediction_steps, self.config.encoder_dim
        return self.predictor(c).view(B, L, K, D).permute(0, 2, 1, 3)

    def forward(self, wave: torch.Tensor) -> CPCOutput:
        z = self.encode(wave)
        c = self.autoregress(z)
        return CPCOutput(z=z, c=c, predictions=self.predict(c))

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> CPCModel:
        """The model of a weights file written by ``save_cpc``, in eval mode; a
        :class:`UserInputError` naming it when it is not a CPC model (another kind, no
        config, wrong shapes) or its weights hold NaN or infinite values."""
        tensors, config = load_weights(path, expected_kind=CPC_KIND)
        model = cls(CPCConfig.from_dict(config))
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise UserInputError(f"{path}: weights do not match their CPC config ({exc})") from exc
        return model.to(map_location).eval()

    @classmethod
    def _from_folder(cls, folder: Path, map_location: str | torch.device = "cpu") -> CPCModel:
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} in this folder (not a CPC)")
        model = cls.from_file(folder / WEIGHTS_NAME, map_location)
        model.training_record = (read_hub_config(folder, HUB_MODEL_TYPE) or {}).get("training")
        return model

    def _save_folder(self, folder: Path) -> None:
        save_weights(folder / WEIGHTS_NAME, self.state_dict(), self.config.to_dict(), CPC_KIND)
        record = {"cpc": self.config.to_dict(), "training": self.training_record}
        write_hub_config(folder, HUB_MODEL_TYPE, record)

    def model_card(self) -> str:
        return cpc_card(self.config.to_dict(), self.training_record)


__all__ = [
    "CPC_KIND",
    "ENCODER_NORMS",
    "HUB_MODEL_TYPE",
    "CPCConfig",
    "CPCEncoder",
    "CPCModel",
    "CPCOutput",
    "ChannelNorm",
]
