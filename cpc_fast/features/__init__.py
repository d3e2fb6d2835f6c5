"""Recognizer input features: 40-d LFBE in torch, and an on-disk cache for LFBE and frozen
CPC contexts (extracted once per checkpoint and corpus)."""

from cpc_fast.features.cache import FeatureSet, cached_features, module_digest
from cpc_fast.features.extract import cpc_context_features, cpc_contexts, lfbe_features
from cpc_fast.features.lfbe import LFBE, LFBEConfig, lfbe, mel_filterbank

__all__ = [
    "LFBE",
    "FeatureSet",
    "LFBEConfig",
    "cached_features",
    "cpc_context_features",
    "cpc_contexts",
    "lfbe",
    "lfbe_features",
    "mel_filterbank",
    "module_digest",
]
