"""A trained emotion model on disk, and inference from raw audio with it.

Two folder layouts hold one model (a setup, fold and run), and both load with
:func:`load_model` (or :meth:`EmotionModel.from_pretrained`):

* **An experiment's unit folder** ``OUT/<setup>/<fold>/run<r>``: ``model.safetensors`` (kind
  ``emotion-recognizer``) holds the recognizer's weights under ``recognizer.``, and for
  ``joint`` the CPC model's under ``cpc.``; its metadata config (also written as
  ``config.json``) says how to turn audio into the recognizer's input and how to map
  outputs back to labels::

    {"setup": "sup" | "joint" | "mini" | "pre",
     "features": {"kind": "lfbe", "lfbe": {...}}                      (sup)
               | {"kind": "cpc", "cpc": {"path": ..., "digest": ...}}  (mini, pre: frozen CPC
                                                                       stored elsewhere)
               | {"kind": "joint", "cpc_config": {...}}                (weights inside)
               | {"kind": "ssl", "ssl": {"source": ..., "digest": ...,  (ssl-<name>: a frozen
                  "layers": ..., "chunk_samples": ..., ...}},           Hugging Face model
                                                                       stored elsewhere)
     "recognizer": RecognizerConfig, "label_scaler": {"mean": [3], "std": [3]},
     "label_range": [lo, hi] | null, "dataset": ..., "fold": ..., "run": ...}

  The frozen CPC of ``mini``/``pre`` and the upstream of ``ssl`` are referenced by path and
  weight digest: loading fails with a clear message if it moved (pass ``cpc_path`` or
  ``upstream_path``) or changed. A model trained on the learned weighted sum of an
  upstream's hidden states holds the sum's weights and statistics under ``layer_sum.``.

* **A self-contained folder in the Hugging Face Hub layout** (``cpc-fast export``,
  :meth:`EmotionModel.save_pretrained`): ``config.json`` (the same config with
  ``"model_type": "cpc-fast-emotion"`` and what the model card reports: the test CCC, the
  training command), the same ``model.safetensors``, a ``README.md`` model card and, for
  ``mini``/``pre``, the frozen CPC beside them as ``cpc.safetensors`` (the file ``save_cpc``
  writes: byte-identical for identical weights, so several models that share one CPC
  share its bytes): ``"features": {"kind": "cpc", "cpc": {"file": "cpc.safetensors",
  "digest": ...}}``, checked against the digest when loaded. For ``ssl`` the upstream's
  Hugging Face folder is copied beside them as ``upstream/`` (``"ssl": {"folder":
  "upstream", ...}``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cpc_fast.data.labelled import LabelScaler
from cpc_fast.emotion.batch_predict import too_short
from cpc_fast.emotion.model_card import emotion_card
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import module_digest
from cpc_fast.features.lfbe import LFBE, LFBEConfig
from cpc_fast.features.ssl import SSLFrontEnd
from cpc_fast.features.upstream import SAMPLE_RATE, load_upstream
from cpc_fast.io.atomic import write_json
from cpc_fast.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights, save_weights
from cpc_fast.models.cpc import CPC_KIND, CPCConfig, CPCModel
from cpc_fast.models.hub import HubMixin, model_folder
from cpc_fast.models.loading import load_cpc
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig
from cpc_fast.models.ssl_layers import LayerChoice, LayerSumRecognizer, WeightedLayerSum

KIND = "emotion-recognizer"
HUB_MODEL_TYPE = "cpc-fast-emotion"  # config.json's "model_type" in an exported folder
CPC_FILE = "cpc.safetensors"  # the frozen CPC of mini/pre in an exported folder
UPSTREAM_FOLDER = "upstream"  # the Hugging Face model of ssl in an exported folder
DIMENSIONS = ("activation", "valence", "dominance")


def load_cpc_checked(path: str | os.PathLike, digest: str | None = None) -> CPCModel:
    """``load_cpc(path)``, verifying the weight digest when one is given."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"CPC checkpoint {path} does not exist")
    model = load_cpc(path)
    if digest is not None and module_digest(model) != digest:
        raise UserInputError(
            f"CPC checkpoint {path} is not the one this model was trained on (weights changed)"
        )
    return model


class EmotionModel(HubMixin, nn.Module):
    """A recognizer with the feature front end it was trained on and its label scaling:
    waveforms in, activation, valence and dominance in the training labels' units out.

        forward(wave (B, T) float32 at 16 kHz, lengths (B,) int64 samples) -> (B, 3)

    A zero-padded batch gives each row what the row gives alone (up to float rounding):
    the LFBE front end reads zeros past a row's end, the CPC encoder zeroes each layer's
    frames past it (:meth:`cpc_fast.models.cpc.CPCEncoder.forward`), and the recognizer
    attends to and pools over a row's own ``lengths // 160`` frames. A row needs at least
    one frame (:attr:`min_samples`: 160 samples). This module is what ``cpc-fast export
    --onnx`` traces. An ``ssl`` model's upstream runs one waveform at a time, as its feature
    cache was computed (:class:`~cpc_fast.features.ssl.SSLFrontEnd`; 50 frames a second).
    """

    def __init__(
        self,
        recognizer: EmotionRecognizer | LayerSumRecognizer,
        config: dict[str, Any],
        front_end: nn.Module,
        folder: Path | None = None,
    ) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.front_end = front_end  # LFBE, CPCModel or SSLFrontEnd
        self.config = config
        self.folder = folder
        scaler = LabelScaler.from_dict(config["label_scaler"])
        self.register_buffer("label_mean", torch.tensor(scaler.mean), persistent=False)
        self.register_buffer("label_std", torch.tensor(scaler.std), persistent=False)

    @property
    def scaler(self) -> LabelScaler:
        return LabelScaler.from_dict(self.config["label_scaler"])

    @property
    def feature_kind(self) -> str:
        return self.config["features"]["kind"]

    @property
    def hop(self) -> int:
        """Samples per feature frame (160: 10 ms at 16 kHz; an SSL upstream's 320)."""
        if self.feature_kind == "lfbe":
            return self.front_end.config.hop_length
        if self.feature_kind == "ssl":
            return self.front_end.upstream.info.hop
        return self.front_end.frame_hop

    @property
    def min_samples(self) -> int:
        """The fewest samples that give a frame: one hop, or an SSL upstream's receptive
        field (400 samples for the wav2vec 2.0 family)."""
        if self.feature_kind != "ssl":
            return self.hop
        return self.front_end.upstream.info.receptive_field

    @property
    def sample_rate(self) -> int:
        if self.feature_kind == "ssl":
            return SAMPLE_RATE
        return self.front_end.config.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.recognizer.parameters()).device

    # -- batches (tensors) -------------------------------------------------------------------

    def frames(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) waveforms, (B,) samples -> features (B, floor(T / hop), D), (B,) frames."""
        full = torch.full((wave.shape[0],), wave.shape[1], device=wave.device)
        # A batch without padding needs no masks (a long file then costs no extra copy);
        # a traced graph always masks: its batches are padded at run time.
        padded = lengths is not None and (
            torch.jit.is_tracing() or bool((lengths != wave.shape[1]).any())
        )
        if not padded:
            lengths = full
        if self.feature_kind == "ssl":
            rows = [self.front_end(wave[b : b + 1, :n])[0] for b, n in enumerate(lengths.tolist())]
            frames = torch.tensor([r.shape[0] for r in rows], device=wave.device)
            return nn.utils.rnn.pad_sequence(rows, batch_first=True), frames
        if self.feature_kind == "lfbe":
            if padded:
                valid = torch.arange(wave.shape[1], device=wave.device) < lengths.unsqueeze(1)
                wave = torch.where(valid, wave, torch.zeros((), dtype=wave.dtype))
            features = self.front_end(wave)
        else:
            features = self.front_end.context(wave, lengths if padded else None)
        return features, lengths // self.hop

    def scaled(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3) outputs on the scaled (z-score) labels."""
        if lengths is not None and wave.device.type == "cpu" and not torch.jit.is_tracing():
            return self._scaled_by_rows(wave, lengths)
        features, frames = self.frames(wave, lengths)
        return self.recognizer(features, frames, check=not torch.jit.is_tracing())

    def _scaled_by_rows(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`scaled` on a CPU: each row's front end and recognizer run on the row alone
        (exactly what the row gives alone), only the CPC's GRU on the batch. On a CPU the
        convolutions and the attention run near the cores' peak for one row already, and a
        batch's activations overflow the caches (16 rows of 5 s: the encoder 2.4x, the
        recognizer 1.4x the time per row on a 2-core EPYC); the GRU's steps are sequential
        matrix-vector products, which a batch turns into matrix products (3x less time)."""
        out = wave.new_full((wave.shape[0], self.recognizer.config.num_outputs), float("nan"))
        framed = [(b, n) for b, n in enumerate(lengths.tolist()) if n >= self.min_samples]
        if not framed:
            return out  # no row holds a frame: NaN, as forward says
        rows = [wave[b : b + 1, :n] for b, n in framed]
        if self.feature_kind in ("lfbe", "ssl"):
            features = [self.front_end(row) for row in rows]
        else:
            z = [self.front_end.encode(row)[0] for row in rows]  # each (L_b, D)
            c = self.front_end.autoregress(nn.utils.rnn.pad_sequence(z, batch_first=True))
            features = [c[i : i + 1, : zi.shape[0]] for i, zi in enumerate(z)]
        for (b, _), x in zip(framed, features, strict=True):
            out[b] = self.recognizer(x, torch.tensor([x.shape[1]], device=x.device))[0]
        return out

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3) activation, valence, dominance in the labels' units; NaN for a row of
        fewer than ``hop`` samples (no frame: nothing to say, and no number that looks like
        an answer)."""
        y = self.scaled(wave, lengths) * self.label_std + self.label_mean
        if lengths is None:
            return y
        framed = (lengths >= self.min_samples).unsqueeze(1)  # (B, 1)
        return torch.where(framed, y, torch.full_like(y, float("nan")))

    @torch.inference_mode()
    def predict_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3) predictions of N waveforms run as one zero-padded batch, in the labels'
        units (float64, as :meth:`predict`)."""
        lengths = [int(w.shape[0]) for w in waves]
        if min(lengths) < self.min_samples:
            raise UserInputError(too_short(min(lengths), self.min_samples))
        batch = np.zeros((len(waves), max(lengths)), np.float32)
        for row, w in zip(batch, waves, strict=True):
            row[: w.shape[0]] = w
        self.eval()
        scaled = self.scaled(
            torch.from_numpy(batch).to(self.device), torch.tensor(lengths, device=self.device)
        )
        return self.scaler.inverse(scaled.double().cpu().numpy())

    # -- one waveform (numpy) ----------------------------------------------------------------

    @torch.inference_mode()
    def features(self, wave: np.ndarray) -> torch.Tensor:
        """(n,) 16 kHz waveform -> (1, L, D) recognizer input: L = floor(n / 160) frames of
        LFBE or CPC contexts, or the SSL upstream's frames (50 a second)."""
        x = torch.from_numpy(np.asarray(wave, np.float32)).to(self.device).unsqueeze(0)
        if x.shape[1] < self.min_samples:
            raise UserInputError(too_short(x.shape[1], self.min_samples))
        return self.frames(x)[0]

    @torch.inference_mode()
    def embed(self, wave: np.ndarray) -> np.ndarray:
        """The recognizer's pooled utterance representation u: (2 D,)."""
        self.eval()
        x = self.features(wave)
        lengths = torch.tensor([x.shape[1]], device=x.device)
        return self.recognizer.embed(x, lengths)[0].float().cpu().numpy()

    @torch.inference_mode()
    def predict(self, wave: np.ndarray) -> np.ndarray:
        """(3,) activation, valence, dominance on the training labels' scale."""
        self.eval()
        x = self.features(wave)
        lengths = torch.tensor([x.shape[1]], device=x.device)
        scaled = self.recognizer(x, lengths)[0].double().cpu().numpy()
        return self.scaler.inverse(scaled)

    # -- the Hub layout ----------------------------------------------------------------------

    @classmethod
    def _from_folder(
        cls,
        folder: Path,
        cpc_path: str | os.PathLike | None = None,
        map_location: str | torch.device = "cpu",
        upstream_path: str | os.PathLike | None = None,
    ) -> EmotionModel:
        return load_model(folder, cpc_path=cpc_path, upstream_path=upstream_path).to(map_location)

    def hub_config(self) -> dict[str, Any]:
        """The config of this model's exported folder: a frozen CPC is the file beside it, an
        SSL upstream the folder beside it."""
        config = dict(self.config)
        if self.feature_kind == "cpc":
            digest = module_digest(self.front_end)
            config["features"] = {"kind": "cpc", "cpc": {"file": CPC_FILE, "digest": digest}}
        elif self.feature_kind == "ssl":
            ssl = {**config["features"]["ssl"], "folder": UPSTREAM_FOLDER}
            config["features"] = {"kind": "ssl", "ssl": ssl}
        return config

    def _save_folder(self, folder: Path) -> None:
        config = self.hub_config()
        if self.feature_kind == "cpc":
            cpc = self.front_end
            save_weights(folder / CPC_FILE, cpc.state_dict(), cpc.config.to_dict(), CPC_KIND)
        if self.feature_kind == "ssl":
            _copy_upstream(self.front_end.upstream.info.source, folder / UPSTREAM_FOLDER)
        joint = self.front_end if self.feature_kind == "joint" else None
        recognizer, layer_sum = self.recognizer, None
        if isinstance(recognizer, LayerSumRecognizer):
            recognizer, layer_sum = recognizer.recognizer, recognizer.layer_sum
        save_model(folder, recognizer, config, cpc=joint, layer_sum=layer_sum)
        write_json(folder / CONFIG_NAME, {"model_type": HUB_MODEL_TYPE, **config})

    def model_card(self) -> str:
        return emotion_card(self.hub_config())


def save_model(
    folder: str | os.PathLike,
    recognizer: EmotionRecognizer,
    config: dict[str, Any],
    cpc: torch.nn.Module | None = None,
    layer_sum: WeightedLayerSum | None = None,
) -> None:
    """Writes ``model.safetensors`` (+ ``config.json``); ``cpc`` only for the joint setup,
    ``layer_sum`` for SSL features combined by learned layer weights."""
    folder = Path(folder)
    state = {f"recognizer.{k}": v for k, v in recognizer.state_dict().items()}
    if cpc is not None:
        state.update({f"cpc.{k}": v for k, v in cpc.state_dict().items()})
    if layer_sum is not None:
        state.update({f"layer_sum.{k}": v for k, v in layer_sum.state_dict().items()})
    save_weights(folder / WEIGHTS_NAME, state, config, KIND)
    write_json(folder / CONFIG_NAME, config)


def load_model(
    folder: str | os.PathLike,
    *,
    cpc_path: str | os.PathLike | None = None,
    upstream_path: str | os.PathLike | None = None,
) -> EmotionModel:
    """Loads a model folder of either layout (module docstring), or its model.safetensors.

    ``cpc_path`` points a ``mini``/``pre`` model at its frozen CPC if it moved;
    ``upstream_path`` an ``ssl`` model at its Hugging Face model folder.
    """
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME if folder.is_dir() else folder
    if not weights.is_file():
        raise UserInputError(
            f"{folder}: no {WEIGHTS_NAME}; expected an experiment's run folder or an exported "
            "model folder"
        )
    state, config = load_weights(weights, expected_kind=KIND)
    recognizer = EmotionRecognizer(RecognizerConfig.from_dict(config["recognizer"]))
    recognizer.load_state_dict(_strip(state, "recognizer."))
    features = config["features"]
    if features["kind"] == "lfbe":
        front_end = LFBE(LFBEConfig(**features["lfbe"]))
    elif features["kind"] == "cpc":
        front_end = _frozen_cpc(weights, features["cpc"], cpc_path)
    elif features["kind"] == "joint":
        front_end = CPCModel(CPCConfig.from_dict(features["cpc_config"]))
        front_end.load_state_dict(_strip(state, "cpc."))
    elif features["kind"] == "ssl":
        front_end = _ssl_front_end(weights, features["ssl"], upstream_path)
        layer_sum = _strip(state, "layer_sum.")
        if layer_sum:
            stacked = layer_sum["weights"].shape[0]
            summed = WeightedLayerSum(stacked, recognizer.config.input_dim)
            summed.load_state_dict(layer_sum)
            recognizer = LayerSumRecognizer(summed, recognizer)
    else:
        raise UserInputError(f"{weights}: unknown feature kind {features['kind']!r}")
    return EmotionModel(recognizer, config, front_end, weights.parent).eval()


def _frozen_cpc(
    weights: Path, reference: dict[str, str], cpc_path: str | os.PathLike | None
) -> CPCModel:
    """The frozen CPC a model refers to: beside it (an exported folder), or where it was
    when the model was trained; ``cpc_path`` when given."""
    if cpc_path is not None:
        path = Path(cpc_path)
    elif "file" in reference:
        path = weights.parent / reference["file"]
    else:
        path = Path(reference["path"])
    if not path.exists():
        raise UserInputError(
            f"{weights}: the frozen CPC it was trained on, {path}, is gone; pass its new "
            "location with `cpc_path=PATH`"
        )
    return load_cpc_checked(path, reference["digest"])


def _ssl_front_end(
    weights: Path, reference: dict[str, Any], upstream_path: str | os.PathLike | None
) -> SSLFrontEnd:
    """The Hugging Face model an ``ssl`` model was trained on (beside it in an exported
    folder, else where it was when trained; ``upstream_path`` when given), checked by its
    digest."""
    if upstream_path is not None:
        source = str(upstream_path)
    elif "folder" in reference:
        source = str(weights.parent / reference["folder"])
    else:
        source = reference["source"]
    local = upstream_path is not None or "folder" in reference or source.startswith("/")
    if local and not Path(source).exists():
        raise UserInputError(
            f"{weights}: the upstream it was trained on, {source}, is gone; pass its new "
            "location with `upstream_path=PATH`"
        )
    upstream = load_upstream(source)
    if upstream.info.digest != reference["digest"]:
        raise UserInputError(
            f"upstream {source} is not the one {weights} was trained on (weights changed)"
        )
    return SSLFrontEnd(upstream, LayerChoice.parse(reference["layers"]), reference["chunk_samples"])


def _copy_upstream(source: str, folder: Path) -> None:
    """The files ``from_pretrained`` reads of an upstream (its local folder, or a hub id's
    snapshot in the local cache), copied into ``folder``."""
    path = model_folder(source, local_files_only=True)  # a hub id: its cached snapshot
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt"):
            shutil.copyfile(file, folder / file.name)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


__all__ = [
    "CPC_FILE",
    "DIMENSIONS",
    "HUB_MODEL_TYPE",
    "KIND",
    "UPSTREAM_FOLDER",
    "EmotionModel",
    "load_cpc_checked",
    "load_model",
    "save_model",
]
