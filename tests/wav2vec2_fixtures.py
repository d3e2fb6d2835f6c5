"""A tiny random ``transformers.Wav2Vec2ForPreTraining`` and Hugging Face's own inputs for it
(``test_wav2vec2.py``, ``test_docs_examples.py``). Needs the ``compat`` extra; without it the
tests that use these helpers are skipped."""

from __future__ import annotations

import torch
from optional_deps import need


def tiny_model():
    """A random Wav2Vec2ForPreTraining small enough for a test, in eval mode (argmax
    quantizer, no dropout), with a codebook of two code vectors in one group."""
    transformers = need("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        codevector_dim=8,
        proj_codevector_dim=8,
        num_codevectors_per_group=2,
        num_codevector_groups=1,
        num_negatives=6,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForPreTraining(config).eval()


def hf_inputs(model, B=3, samples=800, seed=0):
    """A batch of noise, Hugging Face's mask spans and Hugging Face's negatives for it."""
    import numpy as np
    from transformers.models.wav2vec2 import modeling_wav2vec2 as hf  # optional: compat extra

    np.random.seed(seed)  # noqa: NPY002  (Hugging Face's samplers draw from NumPy's global RNG)
    wave = torch.randn(B, samples, generator=torch.Generator().manual_seed(seed))
    L = int(model._get_feat_extract_output_lengths(samples))
    mask = hf._compute_mask_indices((B, L), mask_prob=0.5, mask_length=2, min_masks=2)
    neg = hf._sample_negative_indices((B, L), model.config.num_negatives, mask)
    return wave, torch.from_numpy(mask), torch.from_numpy(neg).long()
