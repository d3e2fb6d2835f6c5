"""Recognizer input features: 40-d LFBE in torch, and an on-disk cache for LFBE, frozen CPC
contexts and the hidden states of Hugging Face speech SSL models (extracted once per
checkpoint and corpus)."""

from cpc_fast.features.cache import FeatureSet, cached_features, module_digest
from cpc_fast.features.extract import cpc_context_features, cpc_contexts, lfbe_features
from cpc_fast.features.lfbe import LFBE, LFBEConfig, lfbe, mel_filterbank
from cpc_fast.features.ssl import SSLFeatureCache
from cpc_fast.features.upstream import Upstream, load_upstream

__all__ = [
    "LFBE",
    "FeatureSet",
    "LFBEConfig",
    "SSLFeatureCache",
    "Upstream",
    "cached_features",
    "cpc_context_features",
    "cpc_contexts",
    "lfbe",
    "lfbe_features",
    "load_upstream",
    "mel_filterbank",
    "module_digest",
]
