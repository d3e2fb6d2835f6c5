"""Tiny randomly initialised speech SSL models of each family, saved as Hugging Face model
folders (config.json, weights, preprocessor_config.json): what ``--upstream`` reads, with
nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HIDDEN = 32
LAYERS = 3
_COMMON = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def family_configs(transformers) -> dict[str, object]:
    """One config per family; the wav2vec 2.0 ones in both layouts (BASE: GroupNorm after
    the first convolution and post-LN layers; LARGE: LayerNorm everywhere and pre-LN)."""
    return {
        "wav2vec2": transformers.Wav2Vec2Config(**_COMMON),
        "wav2vec2-large": transformers.Wav2Vec2Config(
            **_COMMON, feat_extract_norm="layer", do_stable_layer_norm=True
        ),
        "hubert": transformers.HubertConfig(**_COMMON),
        "wavlm": transformers.WavLMConfig(**_COMMON, num_buckets=32, max_bucket_distance=100),
        "data2vec": transformers.Data2VecAudioConfig(
            **{**_COMMON, "num_conv_pos_embeddings": 5},
            conv_pos_kernel_size=5,
            num_conv_pos_embedding_layers=2,
        ),
    }


def save_tiny_upstream(
    transformers, config, folder: Path, *, normalize: bool = True, seed: int = 0
) -> Path:
    """A randomly initialised model of ``config`` and its feature extractor in ``folder``."""
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=normalize).save_pretrained(folder)
    return folder


def plain_hidden_states(transformers, folder: Path, wave: np.ndarray) -> list[np.ndarray]:
    """The reference: what a plain loop gets for one file, the folder's own feature
    extractor and model, ``output_hidden_states``: (L, H) float32 per hidden state."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    return [s[0].numpy() for s in states]
