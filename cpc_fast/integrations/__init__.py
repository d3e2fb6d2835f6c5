"""Drop-in glue for other contrastive projects: the fused InfoNCE with their shapes and rules.

- :mod:`cpc_fast.integrations.wav2vec2` — Hugging Face ``Wav2Vec2ForPreTraining``: its
  negative sampler on the tensors' device and its contrastive loss (cosine / 0.1, negatives
  equal to the positive by value masked, summed over masked frames).
- :mod:`cpc_fast.integrations.fairseq` — fairseq wav2vec 2.0: ``compute_preds`` +
  ``Wav2vecCriterion(infonce=True)`` in one call (loss, sample size, its "argmax and not
  argmin" accuracy), and ``sample_negatives``' same-utterance and cross-sample draws.
- :mod:`cpc_fast.integrations.speechbrain` — SpeechBrain's ``ContrastiveLoss`` (loss and
  argmax accuracy) and ``sample_negatives``.
- :mod:`cpc_fast.integrations.nemo` — NeMo's self-supervised ``ContrastiveLoss`` (unquantized
  targets) and its without-replacement draw.
- :mod:`cpc_fast.integrations.cpc_audio` — CPC_audio's ``CPCUnsupersivedCriterion`` and its
  (t + r) mod S draw.

Each keeps its toolkit's constructor arguments and call signature (negatives may also be
given as indices, which is what lets the fused kernels skip the gathered tensor), and each
sampler draws on the device what its toolkit's means to draw; the docstrings name where the
toolkit's own sampler does not. Nothing here imports any of those toolkits: the functions
take and return plain tensors, so they work without them (the optional ``compat`` extra
installs ``transformers`` for the Hugging Face comparison tests only).
"""
