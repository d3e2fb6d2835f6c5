"""Drop-in glue for other contrastive projects: the fused InfoNCE with their shapes and rules.

- :mod:`cpc_fast.integrations.wav2vec2` — Hugging Face ``Wav2Vec2ForPreTraining`` (and
  fairseq's wav2vec 2.0): its negative sampler on the tensors' device and its contrastive
  loss (cosine / 0.1, negatives equal to the positive by value masked, summed over masked
  frames).

Nothing here imports ``transformers``: the functions take and return plain tensors, so they
work without the optional ``compat`` extra (which only the comparison tests need).
"""
