"""A Hugging Face speech SSL model as a frozen feature extractor: wav2vec 2.0, HuBERT,
WavLM, data2vec-audio, or any model ``transformers.AutoModel`` loads that takes raw 16 kHz
waveforms (``input_values``) and returns hidden states.

    upstream = load_upstream("/models/wavlm-base-plus")        # a folder: nothing downloaded
    states = upstream.hidden_states([upstream.normalized(w) for w in waves])

**Loading.** A folder is read with ``local_files_only`` (its ``config.json``, weights and
``preprocessor_config.json``); a hub id (``microsoft/wavlm-base-plus``) goes through the
Hugging Face cache, downloading only when it is not there. The model is put in eval mode
(no dropout, LayerDrop or SpecAugment), frozen, and identified by the digest of its weights.

**The input, as the model card requires.** Each utterance goes through the checkpoint's own
feature extractor alone (``do_normalize``: zero mean and unit variance over the utterance,
as wav2vec 2.0 BASE and WavLM LARGE want and WavLM BASE+ does not), exactly as
``feature_extractor(wave, sampling_rate=16000)`` in a plain loop.

**Padded batches give each utterance's own features.** A batch of utterances of different
lengths is zero-padded and run with an attention mask, and two modules that would
otherwise let the padding in are made to ignore it: the GroupNorm after the first
convolution of the ``group``-norm checkpoints (wav2vec 2.0 and HuBERT BASE, WavLM BASE+),
which normalises each channel over all frames, gets the statistics of the valid frames only;
and the stacked positional convolutions of data2vec-audio get their padded frames zeroed
after each layer, as an utterance alone sees zeros past its end. Every other module is
per-frame, masked, or reads only valid samples (a valid frame of a convolution without
padding), so each utterance's hidden states equal those of the utterance run alone, to float
rounding (``tests/test_ssl_features.py``). A model whose padded batches still differ (a
family this does not know) is found by a check at load, on two random utterances, and runs
one utterance at a time.

**Long files** are cut into chunks that overlap by a quarter of their length, each
starting on a frame boundary, and each frame is taken from the chunk in whose middle part it
lies, so memory stays bounded whatever the file's length (:func:`chunk_plan`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cpc_fast.errors import UserInputError, require_extra
from cpc_fast.features.cache import module_digest
from cpc_fast.models.ssl_layers import LayerChoice

SAMPLE_RATE = 16000
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Padded batches within this of single utterances pass the check at load: float rounding of
# other summation orders, far below float16 storage's 2^-11.
_BATCH_CHECK_TOLERANCE = 1e-4


def require_transformers():
    """The ``transformers`` module, or one line saying how to install it."""
    return require_extra("transformers", "the ssl setup", "ssl")


@dataclass(frozen=True)
class UpstreamInfo:
    """What identifies an upstream and shapes its features, without its weights in memory."""

    source: str  # the folder (resolved) or hub id it was loaded from
    digest: str  # of its weights (:func:`~cpc_fast.features.cache.module_digest`)
    model_type: str  # "wav2vec2", "hubert", "wavlm", "data2vec-audio", ...
    num_states: int  # hidden states: layers + 1
    hidden_size: int
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    normalize: bool  # its feature extractor's do_normalize

    @property
    def hop(self) -> int:
        """Samples per frame (320 for the wav2vec 2.0 family: 50 frames a second)."""
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        """Samples one frame reads (400); fewer give no frame at all."""
        field, step = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            field += (kernel - 1) * step
            step *= stride
        return field

    def frames(self, samples: int) -> int:
        """Frames of an utterance of ``samples`` (the convolutions' output length)."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            samples = (samples - kernel) // stride + 1
        return max(int(samples), 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_plan(samples: int, chunk: int, info: UpstreamInfo) -> list[tuple[int, int, int, int]]:
    """How an utterance of ``samples`` is run: ``(start, end, first, last)`` per chunk, the
    chunk's samples [start, end) and the frames [first, last) of the utterance taken from
    it (frame j of the chunk is frame start / hop + j of the utterance).

    One chunk when ``samples <= chunk``; else chunks of ``chunk`` samples (rounded down to
    whole frames) overlapping by a quarter of that, the last one ending at the end, each
    frame taken from the chunk in whose middle part it lies.
    """
    total = info.frames(samples)
    if samples <= chunk:
        return [(0, samples, 0, total)]
    hop = info.hop
    chunk = chunk // hop * hop
    overlap = (chunk // 4) // hop * hop
    starts = [0]
    while starts[-1] + chunk < samples:
        starts.append(starts[-1] + chunk - overlap)
    plan = []
    for j, start in enumerate(starts):
        end = min(start + chunk, samples)
        ends_at = start // hop + info.frames(end - start)  # one past its last frame
        first = plan[-1][3] if plan else 0
        # The cut between this chunk and the next: the middle of their overlap, in frames.
        last = total if j == len(starts) - 1 else (starts[j + 1] // hop + ends_at) // 2
        if j == len(starts) - 1 and ends_at != total:
            raise ValueError(f"chunks of {chunk} samples do not tile {samples} samples")
        plan.append((start, end, first, last))
    return plan


class _Padding:
    """The batch being run: what the patched modules read (None: a batch without padding)."""

    def __init__(self) -> None:
        self.samples: torch.Tensor | None = None  # (B,) valid samples
        self.frame_mask: torch.Tensor | None = None  # (B, L) valid frames of the encoder


class _ValidFrameGroupNorm(nn.GroupNorm):
    """The per-channel GroupNorm after the first convolution, over each utterance's valid
    frames only (its parameters keep their names: the state dict is unchanged)."""

    def __init__(self, norm: nn.GroupNorm, conv: nn.Conv1d, padding: _Padding) -> None:
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        self.weight, self.bias = norm.weight, norm.bias
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        samples = self.padding.samples
        if samples is None:
            return super().forward(x)
        x = x.float()  # as autocast runs group_norm: statistics in float32
        frames = (samples - self.kernel) // self.stride + 1  # (B,)
        valid = torch.arange(x.shape[2], device=x.device) < frames[:, None]  # (B, T)
        valid = valid[:, None, :].to(x.dtype)
        count = frames.to(x.dtype)[:, None, None]
        mean = (x * valid).sum(2, keepdim=True) / count
        var = ((x - mean) * valid).square().sum(2, keepdim=True) / count
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight[:, None] + self.bias[:, None] if self.affine else y


def _zero_padded_frames(padding: _Padding):
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        mask = padding.frame_mask
        return output if mask is None else output * mask[:, None, :].to(output.dtype)

    return hook


class Upstream:
    """A loaded model, its feature extractor and how to run them (module docstring)."""

    def __init__(self, model: nn.Module, feature_extractor: Any, info: UpstreamInfo) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.info = info
        self.device = torch.device("cpu")
        self._padding = _Padding()
        self._patch()
        self.batchable: bool | None = None  # unknown until :meth:`check_batches`

    # -- set-up ---------------------------------------------------------------------------

    def _patch(self) -> None:
        """Makes padded batches give each utterance's own hidden states (module docstring)."""
        conv_layers = getattr(getattr(self.model, "feature_extractor", None), "conv_layers", [])
        first = conv_layers[0] if len(conv_layers) else None
        norm = getattr(first, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels:
            first.layer_norm = _ValidFrameGroupNorm(norm, first.conv, self._padding)
        positional = getattr(getattr(self.model, "encoder", None), "pos_conv_embed", None)
        for layer in getattr(positional, "layers", None) or []:
            layer.register_forward_hook(_zero_padded_frames(self._padding))

    def to(self, device: torch.device | str) -> Upstream:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def keep_states(self, choice: LayerChoice) -> None:
        """Drops the transformer layers ``choice`` never reads: hidden state k < L is
        recorded as the input of layer k + 1, so layers past k + 1 are not run."""
        last = choice.states(self.info.num_states)[-1]
        layers = getattr(getattr(self.model, "encoder", None), "layers", None)
        if isinstance(layers, nn.ModuleList) and last + 1 < len(layers):
            self.model.encoder.layers = layers[: last + 1]

    def check_batches(self) -> bool:
        """Whether padded batches give each utterance's own hidden states (two seeded random
        utterances, alone and together, in float32); sets :attr:`batchable`."""
        rng = np.random.default_rng(0)
        waves = [
            self.normalized(0.1 * rng.standard_normal(n).astype(np.float32))
            for n in (SAMPLE_RATE, SAMPLE_RATE * 7 // 10)
        ]
        together = self.hidden_states(waves)
        for row, wave in enumerate(waves):
            alone = self.hidden_states([wave])
            frames = self.info.frames(len(wave))
            for a, b in zip(alone, together, strict=True):
                reference = a[0, :frames].float()
                scale = max(1.0, float(reference.abs().max()))
                error = float((b[row, :frames].float() - reference).abs().max())
                if not error <= _BATCH_CHECK_TOLERANCE * scale:
                    self.batchable = False
                    return False
        self.batchable = True
        return True

    # -- running --------------------------------------------------------------------------

    def normalized(self, wave: np.ndarray) -> np.ndarray:
        """(n,) float32: ``wave`` as the checkpoint's feature extractor hands it to the model."""
        values = self.feature_extractor(
            np.asarray(wave, np.float32), sampling_rate=SAMPLE_RATE, return_tensors="np"
        )["input_values"]
        return np.asarray(values[0], np.float32)

    @torch.inference_mode()
    def hidden_states(
        self, waves: Sequence[np.ndarray], autocast: torch.dtype | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The hidden states of normalised utterances run as one zero-padded batch: each
        (B, L, H) on the model's device, L the longest utterance's frames. ``autocast``:
        the dtype of a CUDA autocast (None: float32)."""
        lengths = [len(w) for w in waves]
        x = torch.zeros(len(waves), max(lengths))
        for row, wave in enumerate(waves):
            x[row, : len(wave)] = torch.from_numpy(np.asarray(wave, np.float32))
        x = x.to(self.device, non_blocking=True)
        mask = None
        if min(lengths) != max(lengths):  # padding: the model and the patches must see it
            samples = torch.tensor(lengths, device=self.device)
            mask = torch.arange(x.shape[1], device=self.device) < samples[:, None]
            frames = torch.tensor([self.info.frames(n) for n in lengths], device=self.device)
            self._padding.samples = samples
            self._padding.frame_mask = (
                torch.arange(int(frames.max()), device=self.device) < (frames[:, None])
            )
            mask = mask.long()
        enabled = autocast is not None and self.device.type == "cuda"
        try:
            with (
                torch.autocast(self.device.type, dtype=autocast, enabled=enabled),
                warnings.catch_warnings(),
            ):
                # WavLM's attention passes a float mask beside a bool one: torch warns.
                warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
                out = self.model(x, attention_mask=mask, output_hidden_states=True)
        finally:
            self._padding.samples = self._padding.frame_mask = None
        return tuple(out.hidden_states)

    def features(
        self,
        waves: Sequence[np.ndarray],
        choice: LayerChoice,
        autocast: torch.dtype | None = None,
    ) -> Iterator[np.ndarray]:
        """(L_i, D) float32 features of normalised utterances run as one batch (each no
        longer than a chunk: :func:`chunk_plan` is the caller's)."""
        states = self.hidden_states(waves, autocast)
        chosen = choice.select(states, self.info.num_states)  # (B, L, D)
        for row, wave in enumerate(waves):
            yield chosen[row, : self.info.frames(len(wave))].float().cpu().numpy()


def _is_hub_id(source: str) -> bool:
    """``org/name`` or ``name`` (not a path that exists, or that looks like a path)."""
    return not source.startswith((".", "/", "~")) and source.count("/") <= 1


@contextlib.contextmanager
def _quiet(transformers):
    """Loading a pre-training checkpoint into the bare model lists the weights it leaves out
    (quantizer, projection heads): expected here, so not shown; nor are loading bars."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_upstream(source: str | os.PathLike) -> Upstream:
    """The model of a folder (or hub id) as an :class:`Upstream` on the CPU; one line naming
    ``source`` when it is not a speech model this can use."""
    transformers = require_transformers()
    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and not _is_hub_id(str(source)):
        raise UserInputError(f"upstream {source}: no such folder")
    if local and not (path / "config.json").is_file():
        raise UserInputError(f"{path}: not a Hugging Face model folder (no config.json)")
    where = str(path.resolve()) if local else str(source)
    try:
        with _quiet(transformers):
            model = transformers.AutoModel.from_pretrained(where, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"upstream {where}: cannot load the model ({exc})") from None
    try:
        feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(
            where, local_files_only=local
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(
            f"upstream {where}: no feature extractor settings (preprocessor_config.json: "
            f"copy it from the model's page, it says how to normalise the audio): {exc}"
        ) from None
    config = model.config
    if getattr(model, "main_input_name", None) != "input_values":
        raise UserInputError(
            f"upstream {where}: a {config.model_type} model takes "
            f"{getattr(model, 'main_input_name', '?')}, not raw waveforms (input_values)"
        )
    rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise UserInputError(f"upstream {where}: its feature extractor wants {rate} Hz, not 16 kHz")
    if not hasattr(config, "conv_kernel") or not hasattr(config, "num_hidden_layers"):
        raise UserInputError(
            f"upstream {where}: a {config.model_type} model has no convolutional front end "
            "and transformer layers (conv_kernel, num_hidden_layers) to read hidden states of"
        )
    model.eval().requires_grad_(False)
    info = UpstreamInfo(
        source=where,
        digest=module_digest(model),
        model_type=config.model_type,
        num_states=config.num_hidden_layers + 1,
        hidden_size=config.hidden_size,
        conv_kernel=tuple(config.conv_kernel),
        conv_stride=tuple(config.conv_stride),
        normalize=bool(getattr(feature_extractor, "do_normalize", False)),
    )
    return Upstream(model, feature_extractor, info)


__all__ = [
    "PRECISIONS",
    "SAMPLE_RATE",
    "Upstream",
    "UpstreamInfo",
    "chunk_plan",
    "load_upstream",
    "require_transformers",
]
