"""``cpc_fast.integrations.wav2vec2`` against the real ``transformers.Wav2Vec2ForPreTraining``.

A tiny random model with a codebook of two code vectors (one group), so negatives equal to
the positive by value are common (as once a codebook collapses) and the value masking
decides the number. The model runs in eval mode (argmax quantizer, no dropout): two forward
passes give the same states, one for Hugging Face's loss, one for ours. Needs the ``compat``
extra (``transformers``), which CI installs; the sampler tests need nothing.
"""

from __future__ import annotations

import os

import pytest
import torch
from optional_deps import need
from wav2vec2_fixtures import hf_inputs, tiny_model

from cpc_fast.errors import UserInputError
from cpc_fast.integrations import wav2vec2

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _param_grads(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.huggingface
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_gradients_equal_hugging_face(backend):
    model = tiny_model()
    wave, mask, neg = hf_inputs(model)
    theirs = model(wave, mask_time_indices=mask, sampled_negative_indices=neg)
    theirs.contrastive_loss.backward()
    their_grads = _param_grads(model)

    out = model(wave, mask_time_indices=mask)  # no sampled_negative_indices: no loss
    assert out.loss is None
    states, quantized = out.projected_states, out.projected_quantized_states
    # The tiny codebook makes negatives equal to their positive by value: masking matters.
    B, L, D = quantized.shape
    flat = quantized.reshape(B * L, D)
    equal = (flat[neg.view(B * L, -1)] == flat.unsqueeze(1)).all(-1)[mask.view(-1)]
    assert 0 < equal.float().mean() < 1
    ours = wav2vec2.contrastive_loss(
        states, quantized, mask, neg, model.config.contrastive_logits_temperature, backend=backend
    )
    ours.backward()
    our_grads = _param_grads(model)
    torch.testing.assert_close(ours, theirs.contrastive_loss, rtol=1e-5, atol=1e-5)
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name, g in their_grads.items():
        # float32 sums in another order: relative to the largest entry of each gradient.
        error = (our_grads[name] - g).abs().max().item()
        assert error <= 1e-5 * g.abs().max().item() + 1e-8, (name, error)
    # Without the value masking the number would be different: the test can fail.
    unmasked = _unmasked_loss(states, quantized, mask, neg)
    assert (unmasked - ours).abs() > 1e-3


def _unmasked_loss(states, quantized, mask, neg):
    from cpc_fast.losses.info_nce import info_nce

    B, L, D = states.shape
    rows = torch.arange(B * L)
    pos = torch.where(mask.view(-1), rows, -100)
    return info_nce(
        states.reshape(B * L, D),
        quantized.reshape(B * L, D),
        pos,
        neg.view(B * L, -1),
        0.1,
        "sum",
        similarity="cosine",
        backend="reference",
    )


@pytest.mark.huggingface
def test_our_sampler_feeds_hugging_face_the_same_loss():
    model = tiny_model()
    wave, mask, _ = hf_inputs(model, seed=1)
    neg = wav2vec2.sample_negative_indices(
        mask, model.config.num_negatives, generator=torch.Generator().manual_seed(0)
    )
    theirs = model(wave, mask_time_indices=mask, sampled_negative_indices=neg).contrastive_loss
    out = model(wave, mask_time_indices=mask)
    ours = wav2vec2.contrastive_loss(
        out.projected_states, out.projected_quantized_states, mask, neg
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _random_mask(B, L, seed):
    mask = torch.rand(B, L, generator=torch.Generator().manual_seed(seed)) < 0.4
    mask[:, 1] = mask[:, -2] = True  # at least two masked frames per row
    return mask


def _sampler(name):
    if name == "ours":
        return lambda mask, n, seed: wav2vec2.sample_negative_indices(
            mask.to(DEVICE), n, generator=torch.Generator(DEVICE).manual_seed(seed)
        ).cpu()

    def hugging_face(mask, n, seed):
        need("transformers")
        import numpy as np
        from transformers.models.wav2vec2 import modeling_wav2vec2 as hf  # optional: compat extra

        np.random.seed(seed)  # noqa: NPY002  (Hugging Face's sampler uses NumPy's global RNG)
        return torch.from_numpy(hf._sample_negative_indices(mask.shape, n, mask.numpy())).long()

    return hugging_face


@pytest.mark.parametrize(
    "name", ["ours", pytest.param("huggingface", marks=pytest.mark.huggingface)]
)
def test_sampler_range_exclusion_and_uniformity(name):
    # The same checks pass for Hugging Face's sampler: both draw from the same distribution.
    sample = _sampler(name)
    B, L, N = 3, 17, 4000
    mask = _random_mask(B, L, 0)
    neg = sample(mask, N, 1)  # (B, L, N) flat indices
    assert neg.shape == (B, L, N)
    frame = neg - torch.arange(B).view(B, 1, 1) * L
    masked = mask.unsqueeze(2).expand_as(neg)
    assert ((frame >= 0) & (frame < L))[masked].all()  # inside the row's own utterance
    own = torch.arange(L).view(1, L, 1).expand_as(neg)
    assert not (frame == own)[masked].any()  # never the frame itself
    assert mask.gather(1, frame.view(B, -1)).view(B, L, N)[masked].all()  # masked frames only
    for b in range(B):
        frames = mask[b].nonzero().view(-1)
        c = len(frames)
        for t in frames.tolist():
            counts = torch.bincount(frame[b, t], minlength=L)[frames]
            others = counts[frames != t]
            expected = N / (c - 1)
            chi2 = ((others.double() - expected) ** 2 / expected).sum().item()
            assert chi2 < _chi2_critical(c - 2), (b, t, chi2)


def _chi2_critical(df: int, z: float = 3.89) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z = 3.89 is p = 5e-5 per test, so the
    ~20 tests here stay far from a false alarm."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_sampler_runs_on_the_masks_device_and_is_seeded():
    mask = _random_mask(2, 9, 3).to(DEVICE)
    a = wav2vec2.sample_negative_indices(mask, 5, torch.Generator(DEVICE).manual_seed(4))
    b = wav2vec2.sample_negative_indices(mask, 5, torch.Generator(DEVICE).manual_seed(4))
    assert a.device == mask.device and a.dtype == torch.int64 and torch.equal(a, b)
    ints = wav2vec2.sample_negative_indices(mask.long(), 5, torch.Generator(DEVICE).manual_seed(4))
    assert torch.equal(ints, a)  # Hugging Face passes the mask as 0/1 integers too


def test_sampler_takes_a_non_contiguous_mask():
    mask = _random_mask(9, 2, 3).t()  # (2, 9), transposed: not contiguous
    assert not mask.is_contiguous()
    a = wav2vec2.sample_negative_indices(mask, 5, torch.Generator().manual_seed(4))
    b = wav2vec2.sample_negative_indices(mask.contiguous(), 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def _loss_inputs(B=2, L=8, D=4, N=3):
    g = torch.Generator().manual_seed(5)
    mask = _random_mask(B, L, 5)
    neg = wav2vec2.sample_negative_indices(mask, N, torch.Generator().manual_seed(0))
    return torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g), mask, neg


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s, q, m, n: (s, q[:, :-1], m, n), "`projected_quantized_states` must have shape"),
        (lambda s, q, m, n: (s, q, m[:, :-1], n), "`mask_time_indices` must have shape"),
        (lambda s, q, m, n: (s, q, m, n[:, :-1]), "`sampled_negative_indices` must have shape"),
        (lambda s, q, m, n: (s, q, m, n.float()), "`sampled_negative_indices` must be an int"),
        (lambda s, q, m, n: (s, q, m, n + 16), "`sampled_negative_indices` holds index"),
        (lambda s, q, m, n: (s, q, m & torch.tensor([[True], [False]]), n), "row 1 has no masked"),
        (lambda s, q, m, n: (s[0], q, m, n), "`projected_states` must be a"),
    ],
)
def test_bad_loss_input_names_the_argument(change, match):
    with pytest.raises(UserInputError, match=match):
        wav2vec2.contrastive_loss(*change(*_loss_inputs()), backend="reference")
    states, quantized, mask, neg = _loss_inputs()
    with pytest.raises(UserInputError, match="`temperature`"):
        wav2vec2.contrastive_loss(states, quantized, mask, neg, -0.1, backend="reference")
    with pytest.raises(UserInputError, match="`reduction`"):
        wav2vec2.contrastive_loss(states, quantized, mask, neg, reduction="avg")


def test_bad_sampler_input_names_the_argument():
    mask = _random_mask(2, 9, 6)
    mask[1] = False
    mask[1, 4] = True  # one masked frame: no other frame to draw from
    with pytest.raises(UserInputError, match="`mask_time_indices` row 1 has 1 masked frame"):
        wav2vec2.sample_negative_indices(mask, 5)
    with pytest.raises(UserInputError, match="`num_negatives`"):
        wav2vec2.sample_negative_indices(_random_mask(2, 9, 6), 0)


def test_reductions():
    states, quantized, mask, neg = _loss_inputs()
    per_frame = wav2vec2.contrastive_loss(states, quantized, mask, neg, reduction="none")
    assert per_frame.shape == mask.shape and (per_frame[~mask] == 0).all()
    total = wav2vec2.contrastive_loss(states, quantized, mask, neg)
    mean = wav2vec2.contrastive_loss(states, quantized, mask, neg, reduction="mean")
    torch.testing.assert_close(total, per_frame.sum())
    torch.testing.assert_close(mean, per_frame.sum() / mask.sum())


def test_importable_without_transformers():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import cpc_fast.integrations.wav2vec2 as w; print(w.contrastive_loss.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "contrastive_loss" in out.stdout, out.stderr
