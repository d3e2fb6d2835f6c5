"""``cpc_fast.integrations.nemo``: NeMo's self-supervised ``ContrastiveLoss`` and its sampler.

``_nemo_loss`` re-implements the published formula in float64 (NeMo cannot be installed
here), from the module's own ``target_proj`` weights: spectrogram and mask (B, C, T) ->
(B, T, C), zero-padded to a multiple of the T' decoder steps and folded into them,
projected; a step is masked when the mean of its mask exceeds ``mask_threshold``; each
masked step's decoder output is scored by cosine / logit_temp against its target and its
negatives, a negative equal to the target by value at -inf; cross-entropy with target 0
reduced by ``reduce`` (rows in NeMo's order for "none"), times ``multiplier / B``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from sampler_checks import is_uniform

from cpc_fast.errors import UserInputError
from cpc_fast.integrations import nemo

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
BACKENDS = ["reference", pytest.param("fused", marks=needs_triton)]


def _nemo_loss(loss_module, spec, spec_mask, out, neg, *, reduce, same_utterance):
    """float64. neg (M, N) flat step indices, one row per masked step in (b, t) order."""
    B, C, T = spec.shape
    steps = out.shape[1]
    x = spec.double().transpose(1, 2)
    m = spec_mask.double().transpose(1, 2)
    pad = math.ceil(T / steps) * steps - T
    x, m = F.pad(x, (0, 0, 0, pad)), F.pad(m, (0, 0, 0, pad))
    x, m = x.reshape(B, steps, -1), m.reshape(B, steps, -1)
    w, bias = loss_module.target_proj.weight.double(), loss_module.target_proj.bias.double()
    targets = (x @ w.t() + bias).reshape(B * steps, -1)
    masked = (m.mean(-1) > loss_module.mask_threshold).reshape(-1)
    rows = [i for i in range(B * steps) if masked[i]]
    logits = []
    for r, row_neg in zip(rows, neg.tolist(), strict=True):
        cand = torch.stack([targets[r]] + [targets[j] for j in row_neg])
        s = F.cosine_similarity(out.double().reshape(B * steps, -1)[r].unsqueeze(0), cand, dim=-1)
        s = s / loss_module.logit_temp
        same = torch.tensor([bool((targets[j] == targets[r]).all()) for j in row_neg])
        logits.append(torch.cat([s[:1], s[1:].masked_fill(same, -math.inf)]))
    logits = torch.stack(logits)
    if reduce == "none" and same_utterance:
        per = len(rows) // B  # NeMo's order: rank t' among the utterance's masked steps, then b
        logits = logits.view(B, per, -1).transpose(0, 1).reshape(len(rows), -1)
    target = torch.zeros(len(rows), dtype=torch.long)
    return F.cross_entropy(logits, target, reduction=reduce) * (loss_module.multiplier / B)


def _inputs(B=3, C=4, T=23, steps=6, seed=0, equal_counts=True):
    """Spectrograms (B, C, T), masks, decoder outputs (B, T', 8): T = 23 pads to 24 = 6 · 4."""
    g = torch.Generator().manual_seed(seed)
    spec = torch.randn(B, C, T, generator=g)
    mask = torch.zeros(B, C, T)
    per_step = math.ceil(T / steps)
    for b in range(B):
        # The last step is 3 frames and a zero pad: masked, its mask's mean is 0.75, below
        # the threshold, so it is never a row (NeMo's rule); equal counts leave it out.
        picks = torch.randperm(steps - equal_counts, generator=g)[: 4 if equal_counts else 3 + b]
        for s in picks.tolist():
            mask[b, :, s * per_step : (s + 1) * per_step] = 1
    spec[1, :, 4:8] = spec[2, :, 4:8]  # step 1 of utterances 1 and 2 equal: a value tie
    out = torch.randn(B, steps, 8, generator=g)
    return spec, mask, out


def _module(**kwargs):
    torch.manual_seed(1)
    return nemo.ContrastiveLoss(in_dim=4, proj_dim=8, combine_time_steps=4, **kwargs)


def _draws(loss_module, mask, seed, steps=6, device=DEVICE):
    """The (M, N) draws the module makes with a generator seeded ``seed``: the same sampler
    on the same masked steps (NeMo's rule, computed here: folded mask mean > threshold)."""
    B, C, T = mask.shape
    folded = F.pad(mask.transpose(1, 2), (0, 0, 0, math.ceil(T / steps) * steps - T))
    step_mask = folded.reshape(B, steps, -1).mean(-1) > loss_module.mask_threshold
    return nemo.sample_negative_indices(
        step_mask.to(device),
        loss_module.num_negatives,
        same_utterance=loss_module.sample_from_same_utterance_only,
        from_unmasked=loss_module.sample_from_non_masked,
        generator=torch.Generator(device).manual_seed(seed),
    ).cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduce", ["sum", "mean", "none"])
@pytest.mark.parametrize(
    "sampling",
    [(True, False), (True, True), (False, False), (False, True)],
    ids=["utterance-masked", "utterance-all", "batch-masked", "batch-all"],
)
def test_loss_and_gradients_match_nemo_s_formula(backend, reduce, sampling):
    same, unmasked = sampling
    n = 3 if same and not unmasked else 5  # at most the 4 masked steps of an utterance
    module = _module(
        num_negatives=n,
        reduce=reduce,
        sample_from_same_utterance_only=same,
        sample_from_non_masked=unmasked,
        backend=backend,
    ).to(DEVICE)
    spec, mask, out = _inputs()
    outs = out.to(DEVICE).requires_grad_()
    loss = module(
        spec.to(DEVICE), mask.to(DEVICE), outs, generator=torch.Generator(DEVICE).manual_seed(2)
    )
    neg = _draws(module, mask, 2)
    out64 = out.double().requires_grad_()
    want = _nemo_loss(module.cpu(), spec, mask, out64, neg, reduce=reduce, same_utterance=same)
    torch.testing.assert_close(loss.detach().cpu().double(), want.detach(), rtol=1e-5, atol=1e-6)
    (got_grad,) = torch.autograd.grad(loss.sum(), [outs])
    (want_grad,) = torch.autograd.grad(want.sum(), [out64])
    # float32 against float64, scaled by multiplier / B = 16 / 3
    torch.testing.assert_close(got_grad.cpu().double(), want_grad, rtol=1e-4, atol=1e-5)
    # Gradients reach target_proj too, as NeMo's do.
    module = module.to(DEVICE)
    module(spec.to(DEVICE), mask.to(DEVICE), outs).sum().backward()
    assert module.target_proj.weight.grad.abs().sum() > 0


def test_unequal_masked_counts_work_for_sums_and_say_why_not_for_rows():
    module = _module(num_negatives=2)
    spec, mask, out = _inputs(equal_counts=False)
    loss = module(spec, mask, out, generator=torch.Generator().manual_seed(3))
    want = _nemo_loss(
        module,
        spec,
        mask,
        out,
        _draws(module, mask, 3, device="cpu"),
        reduce="sum",
        same_utterance=True,
    )
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserInputError, match="same number of masked steps"):
        _module(num_negatives=2, reduce="none")(spec, mask, out)


def _step_mask(B=4, T=9, seed=0, equal=True):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(T, generator=g)[: 5 if equal else 4 + b]] = True
    return mask


@pytest.mark.parametrize("same", [True, False], ids=["utterance", "batch"])
@pytest.mark.parametrize("unmasked", [False, True], ids=["masked", "all"])
def test_sampler_draws_distinct_candidates_uniformly(same, unmasked):
    mask = _step_mask(equal=False)
    B, T = mask.shape
    N, repeats = 3, 800
    draws = torch.stack(
        [
            nemo.sample_negative_indices(
                mask,
                N,
                same_utterance=same,
                from_unmasked=unmasked,
                generator=torch.Generator().manual_seed(s),
            )
            for s in range(repeats)
        ]
    )  # (repeats, M, N)
    rows = mask.reshape(-1).nonzero().squeeze(1)
    assert (draws.sort(-1).values.diff(dim=-1) != 0).all()  # without replacement
    allowed = torch.ones_like(mask) if unmasked else mask
    for i in [0, len(rows) // 2, len(rows) - 1]:
        b = int(rows[i]) // T
        flat = torch.arange(B * T)
        support = flat[allowed.reshape(-1) & ((flat // T == b) if same else True)]
        assert is_uniform(draws[:, i], support, B * T), (i, support)


def test_sampler_rows_of_different_utterances_draw_independently():
    # NeMo shares one draw of step numbers among the rows (t', b) of every b; these do not.
    mask = _step_mask(B=2, T=12, equal=True)
    neg = nemo.sample_negative_indices(mask, 3, generator=torch.Generator().manual_seed(4))
    per = int(mask[0].sum())

    def rank(b, t):  # the ranks, among utterance b's masked steps, that row t drew
        steps = mask[b].nonzero().view(1, -1)
        return ((neg[b * per + t] % 12).unsqueeze(1) == steps).int().argmax(1)

    same = sum(
        bool(torch.equal(rank(0, t).sort().values, rank(1, t).sort().values)) for t in range(per)
    )
    assert same < per  # 5 rows, each a 1-in-10 chance (3 of 5 ranks) of the same set


def test_sampler_errors_name_the_argument():
    mask = _step_mask()
    with pytest.raises(UserInputError, match="`num_negatives`=6 distinct draws"):
        nemo.sample_negative_indices(mask, 6)
    nemo.sample_negative_indices(mask, 9, from_unmasked=True)  # 9 steps per utterance
    with pytest.raises(UserInputError, match="`mask` has no masked step"):
        nemo.sample_negative_indices(torch.zeros_like(mask), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantized_targets": True}, "`quantized_targets=True`"),
        ({"group_loss": True}, "`group_loss=True`"),
        ({"reduce": "avg"}, "`reduce`"),
        ({"logit_temp": 0}, "`logit_temp`"),
    ],
)
def test_bad_constructor_arguments_name_them(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        _module(**kwargs)


def test_bad_forward_inputs_name_them():
    module = _module(num_negatives=2)
    spec, mask, out = _inputs()
    with pytest.raises(UserInputError, match="`spec_masks`"):
        module(spec, mask[:, :, :-1], out)
    with pytest.raises(UserInputError, match="proj_dim=8"):
        module(spec, mask, out[:, :, :5])
    with pytest.raises(UserInputError, match="`in_dim` \\* `combine_time_steps`"):
        module(spec, mask, out[:, :3])


def test_a_boolean_mask_is_read_like_nemo_s_float_one():
    module = _module(num_negatives=2)
    spec, mask, out = _inputs(seed=5)
    floats = module(spec, mask, out, generator=torch.Generator().manual_seed(6))
    bools = module(spec, mask.bool(), out, generator=torch.Generator().manual_seed(6))
    assert torch.equal(floats, bools)
