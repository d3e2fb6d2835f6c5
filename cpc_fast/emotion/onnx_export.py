"""ONNX graphs of the emotion models and of the CPC, and running them with onnxruntime.

    export_emotion_onnx(model, "model.onnx")    # EmotionModel -> one graph, audio in
    export_cpc_onnx(cpc, "model.onnx")          # CPCModel -> z, c
    runner = OnnxEmotionRunner("model.onnx")    # onnxruntime on the CPU
    runner.predict_batch([wave_a, wave_b])      # (2, 3) in the labels' units

An emotion model's graph takes ``wave`` (B, T) float32 at 16 kHz, zero-padded, and
``lengths`` (B,) int64 samples, both axes dynamic, and returns ``activation``, ``valence``
and ``dominance`` (B,) float32 in the training labels' units: the front end (the LFBE, or
the CPC encoder and GRU) is inside, so onnxruntime needs nothing else. Each row gives what
it gives alone (:class:`~cpc_fast.emotion.model_io.EmotionModel`); a row shorter than one
frame (160 samples) gives NaN. The CPC's graph takes the same inputs and returns ``z``
(B, L, encoder_dim), ``c`` (B, L, context_dim) and ``frames`` (B,) int64, each row's valid
frames (L = floor(T / 160)).

**Which exporter.** The TorchScript-based ``torch.onnx.export(..., dynamo=False)``: it
writes the GRU as ONNX's ``GRU`` operator, whose sequence axis stays dynamic. torch 2.13's
default dynamo exporter fails to decompose ``aten.gru`` for ONNX (and an unrolled recurrence
would fix the length of time at export). Traced code takes the paths ONNX can express: the
CPC encoder's ``Conv1d`` layers (the same weights as the CPU's block GEMMs, whose autograd
Function writes in place) and the LFBE's DFT as a convolution (``torch.stft``'s complex
output has no ONNX form); the argument checks that read tensor values are left out.

**Attention in the graph** is written out as matrix products, so its memory grows with the
square of the frames: (B, 8, L, L) float32 scores, 1.2 GB for one minute. PyTorch's
attention (``cpc-fast predict``'s default runtime) computes it blockwise, for hours of audio.

The extras (``pip install 'cpc-fast[export]'``): ``onnx`` writes the metadata and checks a
graph, ``onnxruntime`` runs it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cpc_fast import __version__
from cpc_fast.emotion.model_io import DIMENSIONS, EmotionModel
from cpc_fast.errors import UserInputError, require_extra
from cpc_fast.models.cpc import CPCModel
from cpc_fast.models.hub import EXTRA

OPSET = 17  # LayerNormalization (the CPC's channel norm) and STFT-free: onnxruntime >= 1.14
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INPUTS = ("wave", "lengths")
DYNAMIC = {"wave": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}}
# How far onnxruntime's outputs may be from PyTorch's when an export checks itself (labels'
# units; float32 rounding over another summation order is ~1e-6).
CHECK_ATOL = 1e-4


def need(module: str, what: str) -> Any:
    """Imports a package of the ``export`` extra, or a :class:`UserInputError` naming it."""
    return require_extra(module, what, EXTRA)


class _EmotionGraph(nn.Module):
    """An :class:`EmotionModel` with one output per dimension."""

    def __init__(self, model: EmotionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.model(wave, lengths)  # (B, 3)
        return y[:, 0], y[:, 1], y[:, 2]


class _CPCGraph(nn.Module):
    """A :class:`CPCModel`'s z and c of a zero-padded batch, with each row's frame count."""

    def __init__(self, cpc: CPCModel) -> None:
        super().__init__()
        self.cpc = cpc

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.cpc.encode(wave, lengths)
        c = self.cpc.autoregress(z)
        return z, c, lengths // self.cpc.frame_hop


def _example(hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch to trace with: two rows of different lengths, neither a multiple of
    the hop (so no size is mistaken for a constant)."""
    generator = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(2, 50 * hop + 37, generator=generator)
    lengths = torch.tensor([wave.shape[1], 31 * hop + 11])
    wave[1, lengths[1] :] = 0
    return wave, lengths


def _export(
    module: nn.Module,
    path: Path,
    outputs: Sequence[str],
    dynamic: dict,
    metadata: dict[str, str],
    hop: int,
) -> Path:
    """Traces ``module`` on a padded batch, writes the graph with ``metadata`` in its
    ``metadata_props`` to ``path`` (atomically) and checks it with ``onnx.checker``."""
    onnx = need("onnx", "ONNX export")
    module = module.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which
            # cannot export the GRU (module docstring). The tracer's warnings are about the
            # argument checks on sizes (constant in the trace, and never failing for a
            # batch the graph accepts) and its own notes (constant folding of strided
            # slices; the GRU's initial state, which it builds from the batch size at run
            # time): the export checks the graph against PyTorch on other batches instead.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch")
            torch.onnx.export(
                module,
                _example(hop),
                str(tmp),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=list(outputs),
                dynamic_axes={**DYNAMIC, **dynamic},
                opset_version=OPSET,
            )
        graph = onnx.load(str(tmp))
        for key, value in {"producer": f"cpc-fast {__version__}", **metadata}.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        check_graph(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_emotion_onnx(model: EmotionModel, path: str | os.PathLike) -> Path:
    """Writes ``model``'s graph (module docstring) to ``path``, atomically, and checks it."""
    metadata = {
        "setup": model.config["setup"],
        "sample_rate": str(model.sample_rate),
        "hop": str(model.hop),
        "outputs": "activation, valence, dominance in the training labels' units",
        "label_range": str(model.config.get("label_range")),
    }
    return _export(
        _EmotionGraph(model),
        Path(path),
        DIMENSIONS,
        {name: {0: "batch"} for name in DIMENSIONS},
        metadata,
        model.hop,
    )


def export_cpc_onnx(cpc: CPCModel, path: str | os.PathLike) -> Path:
    """Writes the CPC's graph: (wave, lengths) -> z, c, frames (module docstring)."""
    metadata = {
        "sample_rate": str(cpc.config.sample_rate),
        "hop": str(cpc.frame_hop),
        "outputs": "z (B, L, encoder_dim), c (B, L, context_dim), frames (B,): valid frames",
    }
    frames = {"z": {0: "batch", 1: "frames"}, "c": {0: "batch", 1: "frames"}}
    frames["frames"] = {0: "batch"}
    return _export(
        _CPCGraph(cpc), Path(path), ("z", "c", "frames"), frames, metadata, cpc.frame_hop
    )


def check_graph(path: str | os.PathLike) -> None:
    """``onnx.checker`` on the file: a :class:`UserInputError` naming it when invalid."""
    onnx = need("onnx", "checking an ONNX graph")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserInputError(f"{path}: not a valid ONNX graph ({exc})") from None


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """onnxruntime's dynamic int8 quantization of ``source``'s weights (activations stay
    float, quantized per batch at run time), written to ``target``."""
    quantization = need("onnxruntime.quantization", "`int8`")
    target = Path(target)
    # It logs a warning on the root logger for each integer tensor it leaves alone (the
    # lengths' arithmetic) and suggests a pre-processing that changes nothing here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantization.quantize_dynamic(
            str(source), str(target), weight_type=quantization.QuantType.QInt8
        )
    finally:
        root.setLevel(level)
    return target


class OnnxRunner:
    """An onnxruntime session on the CPU over a graph with the (wave, lengths) inputs.

    ``optimize`` turns onnxruntime's graph optimisations on (all levels) or off; ``threads``
    is its intra-op thread count (default: onnxruntime's own, one per core)."""

    def __init__(
        self, path: str | os.PathLike, *, optimize: bool = True, threads: int | None = None
    ) -> None:
        ort = need("onnxruntime", "running an ONNX graph")
        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        options.graph_optimization_level = (
            level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
        )
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise UserInputError(f"{path}: onnxruntime cannot load it ({exc})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.hop = int(metadata.get("hop", 160))
        self.sample_rate = int(metadata.get("sample_rate", 16000))

    def run(self, wave: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for a (B, T) float32 batch and its (B,) int64 lengths."""
        feed = {"wave": np.ascontiguousarray(wave, np.float32), "lengths": lengths.astype(np.int64)}
        return self.session.run(None, feed)


class OnnxEmotionRunner(OnnxRunner):
    """An emotion model's graph: ``predict_batch`` as :meth:`EmotionModel.predict_batch`."""

    def predict_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3) float64 predictions of N waveforms run as one zero-padded batch."""
        lengths = np.array([w.shape[0] for w in waves], np.int64)
        if lengths.min() < self.hop:
            raise UserInputError(
                f"audio of {lengths.min()} samples is shorter than one 10 ms frame ({self.hop})"
            )
        batch = np.zeros((len(waves), int(lengths.max())), np.float32)
        for row, w in zip(batch, waves, strict=True):
            row[: w.shape[0]] = w
        return np.stack(self.run(batch, lengths), axis=1).astype(np.float64)


def compare_with_torch(model: EmotionModel, runner: OnnxEmotionRunner) -> float:
    """The largest difference between the graph's outputs and the model's on a padded batch
    of three noise waveforms (0.5, 1.3 and 2.1 s), in the labels' units."""
    generator = np.random.default_rng(0)
    waves = [0.1 * generator.standard_normal(n).astype(np.float32) for n in (8000, 20800, 33600)]
    expected = np.stack([model.predict(w) for w in waves])
    return float(np.abs(runner.predict_batch(waves) - expected).max())


__all__ = [
    "CHECK_ATOL",
    "INT8_NAME",
    "ONNX_NAME",
    "OnnxEmotionRunner",
    "OnnxRunner",
    "check_graph",
    "compare_with_torch",
    "export_cpc_onnx",
    "export_emotion_onnx",
    "need",
    "quantize_int8",
]
