"""A trained emotion model on disk, and inference from raw audio with it.

A model folder (one per setup, fold and run) holds ``model.safetensors`` (kind
``emotion-recognizer``): the recognizer's weights under ``recognizer.``, and for ``joint``
the CPC model's under ``cpc.``; its metadata config (also written as ``config.json``) says
how to turn audio into the recognizer's input and how to map outputs back to labels:

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
``upstream_path``) or changed. A model trained on the learned weighted sum of an upstream's
hidden states holds the sum's weights and statistics under ``layer_sum.``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpc_fast.data.labelled import LabelScaler
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import module_digest
from cpc_fast.features.lfbe import LFBE, LFBEConfig
from cpc_fast.features.ssl import SSLFrontEnd
from cpc_fast.features.upstream import load_upstream
from cpc_fast.io.atomic import write_json
from cpc_fast.io.checkpoint import WEIGHTS_NAME, load_weights, save_weights
from cpc_fast.models.cpc import CPCConfig, CPCModel
from cpc_fast.models.loading import load_cpc
from cpc_fast.models.recognizer import EmotionRecognizer, RecognizerConfig
from cpc_fast.models.ssl_layers import LayerChoice, LayerSumRecognizer, WeightedLayerSum

KIND = "emotion-recognizer"


def load_cpc_checked(path: str | os.PathLike, digest: str | None = None) -> torch.nn.Module:
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


@dataclass
class EmotionModel:
    """A recognizer with the feature front end it was trained on."""

    recognizer: EmotionRecognizer | LayerSumRecognizer
    config: dict[str, Any]
    front_end: torch.nn.Module | None  # LFBE, CPC or SSL model; None only while being built
    folder: Path | None = None

    @property
    def scaler(self) -> LabelScaler:
        return LabelScaler.from_dict(self.config["label_scaler"])

    @property
    def feature_kind(self) -> str:
        return self.config["features"]["kind"]

    def to(self, device: torch.device | str) -> EmotionModel:
        self.recognizer.to(device)
        if self.front_end is not None:
            self.front_end.to(device)
        return self

    @torch.inference_mode()
    def features(self, wave: np.ndarray) -> torch.Tensor:
        """(n,) 16 kHz waveform -> (1, L, D) recognizer input: L = floor(n / 160) frames of
        LFBE or CPC contexts, or the SSL upstream's frames (50 a second)."""
        device = next(self.recognizer.parameters()).device
        x = torch.from_numpy(np.asarray(wave, np.float32)).to(device).unsqueeze(0)  # (1, T)
        if x.shape[1] < 160:
            raise UserInputError(f"audio of {x.shape[1]} samples is shorter than one 10 ms frame")
        if self.feature_kind in ("lfbe", "ssl"):
            return self.front_end(x)
        return self.front_end.context(x)

    @torch.inference_mode()
    def embed(self, wave: np.ndarray) -> np.ndarray:
        """The recognizer's pooled utterance representation u: (2 D,)."""
        self.recognizer.eval()
        x = self.features(wave)
        lengths = torch.tensor([x.shape[1]], device=x.device)
        return self.recognizer.embed(x, lengths)[0].float().cpu().numpy()

    @torch.inference_mode()
    def predict(self, wave: np.ndarray) -> np.ndarray:
        """(3,) activation, valence, dominance on the training labels' scale."""
        self.recognizer.eval()
        x = self.features(wave)
        lengths = torch.tensor([x.shape[1]], device=x.device)
        scaled = self.recognizer(x, lengths)[0].double().cpu().numpy()
        return self.scaler.inverse(scaled)


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
    write_json(folder / "config.json", config)


def load_model(
    folder: str | os.PathLike,
    *,
    cpc_path: str | os.PathLike | None = None,
    upstream_path: str | os.PathLike | None = None,
) -> EmotionModel:
    """Loads a model folder written by an experiment (or its model.safetensors).

    ``cpc_path`` points a ``mini``/``pre`` model at its frozen CPC if it moved;
    ``upstream_path`` an ``ssl`` model at its Hugging Face model folder.
    """
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME if folder.is_dir() else folder
    if not weights.is_file():
        raise UserInputError(f"{folder}: no {WEIGHTS_NAME}; expected an experiment's run folder")
    state, config = load_weights(weights, expected_kind=KIND)
    recognizer = EmotionRecognizer(RecognizerConfig.from_dict(config["recognizer"]))
    recognizer.load_state_dict(_strip(state, "recognizer."))
    features = config["features"]
    if features["kind"] == "lfbe":
        front_end = LFBE(LFBEConfig(**features["lfbe"]))
    elif features["kind"] == "cpc":
        reference = features["cpc"]
        path = Path(cpc_path) if cpc_path is not None else Path(reference["path"])
        if not path.exists():
            raise UserInputError(
                f"{weights}: the frozen CPC it was trained on, {path}, is gone; pass its new "
                "location with `cpc_path=PATH`"
            )
        front_end = load_cpc_checked(path, reference["digest"])
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
    front_end.eval()
    recognizer.eval()
    return EmotionModel(recognizer, config, front_end, weights.parent)


def _ssl_front_end(
    weights: Path, reference: dict[str, Any], upstream_path: str | os.PathLike | None
) -> SSLFrontEnd:
    """The Hugging Face model an ``ssl`` model was trained on, checked by its digest."""
    source = str(upstream_path) if upstream_path is not None else reference["source"]
    if upstream_path is None and reference["source"].startswith("/") and not Path(source).exists():
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


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


__all__ = ["KIND", "EmotionModel", "load_cpc_checked", "load_model", "save_model"]
