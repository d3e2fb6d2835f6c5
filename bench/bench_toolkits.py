"""Benchmark: the toolkits' contrastive losses, written eagerly as each toolkit computes them,
against cpc-fast's drop-ins (``cpc_fast.integrations.fairseq``, ``.speechbrain``, ``.nemo``,
``.cpc_audio``), sampler + loss forward + backward, fp32.

Each baseline is this file's eager version of the toolkit's published formula (not its
code: none of them installs beside this torch): the toolkit's draw, the negatives gathered
into an (N, ..., C) tensor, cosine (or dot / D) logits, value-equal negatives at -inf, the
cross-entropy, and the accuracy where the toolkit reports one. Shapes, each toolkit's
defaults (B scaled down on a CPU, where the eager gathers take seconds):

  fairseq      wav2vec 2.0 BASE: B=8 utterances, T=250 masked frames each, N=100
               same-utterance negatives, final_dim C=256, logit_temp 0.1
  speechbrain  wav2vec2_base recipe: B=8, T=250 masked frames, N=100, C=256
  nemo         conformer SSL: B=8 log-mel spectrograms of 80 x 1000 frames, 4 frames per
               decoder step (T'=250), half the steps masked, N=100, proj_dim 128
  cpc_audio    CPCUnsupersivedCriterion with its 12 linear predictors: B=8 windows of
               S=128 frames, AR = D = 256, N=128

Providers per group: the toolkit's name (the eager baseline) and ``cpc-fast`` (the drop-in:
fused kernels on CUDA, the reference backend on a CPU). Before timing, both are given the
same negatives and must agree.

    pytest --benchmark -k toolkits
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from _harness import DEVICE, ON_GPU, Case, measure

from cpc_fast.integrations import cpc_audio, fairseq, nemo, speechbrain

B = 8 if ON_GPU else 2
CPU_NOTE = "" if ON_GPU else " (B=8 on a GPU)"
T, C, N = 250, 256, 100


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


@functools.cache
def _pair(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    a = torch.randn(shape, device=DEVICE, generator=g)
    b = torch.randn(shape, device=DEVICE, generator=g)
    return a.requires_grad_(), b.requires_grad_()


def _values(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, N) flat indices -> (N, B, T, C) gathered values, as the toolkits hand them."""
    b, t, c = y.shape
    return y.reshape(b * t, c)[index.reshape(-1)].view(b, t, -1, c).permute(2, 0, 1, 3)


def _wav2vec_logits(x, y, negs):
    """compute_preds / SpeechBrain: (N + 1, B, T) cosine logits, value duplicates at -inf."""
    neg_is_pos = (y == negs).all(-1)
    logits = torch.cosine_similarity(x.float(), torch.cat([y.unsqueeze(0), negs]).float(), dim=-1)
    if neg_is_pos.any():
        logits[1:][neg_is_pos] = float("-inf")
    return logits


def fairseq_eager(x, y, negs, logit_temp=0.1):
    """(loss summed, correct count) as compute_preds + Wav2vecCriterion(infonce=True)."""
    logits = _wav2vec_logits(x, y, negs) / logit_temp
    logits = logits.transpose(0, 2).reshape(-1, logits.size(0))
    target = logits.new_zeros(logits.size(0), dtype=torch.long)
    loss = F.cross_entropy(logits, target, reduction="sum")
    with torch.no_grad():
        top, bottom = logits.argmax(-1) == 0, logits.argmin(-1) == 0
        correct = top.sum() - (top & bottom).sum()
    return loss, correct


def speechbrain_eager(x, y, negs, logit_temp=0.1):
    """(loss summed, accuracy) as speechbrain.nnet.losses.ContrastiveLoss."""
    logits = _wav2vec_logits(x, y, negs)
    logits = logits.transpose(0, 2).reshape(-1, logits.size(0))
    target = logits.new_zeros(logits.size(0), dtype=torch.long)
    loss = F.cross_entropy(logits / logit_temp, target, reduction="sum")
    return loss, (logits.argmax(-1) == 0).sum() / logits.size(0)


def _step(loss_fn, leaves):
    def setup() -> tuple:
        for leaf in leaves:
            leaf.grad = None
        return ()

    def run() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return run, setup


def _close(got: torch.Tensor, want: torch.Tensor, who: str) -> None:
    got, want = float(got), float(want)
    assert abs(got - want) <= 1e-4 * abs(want), f"cpc-fast {got} vs the eager {who} {want}"


@pytest.mark.parametrize("provider", ["fairseq", "cpc-fast"])
def test_fairseq(benchmark, provider):
    case = Case(
        "fairseq wav2vec 2.0 sampler + loss fwd+bwd fp32",
        provider,
        "fairseq",
        f"B={B} T={T} N={N} C={C}{CPU_NOTE}",
    )
    x, y = _pair(0, (B, T, C))
    g = _generator(1)
    if provider == "fairseq":

        def loss_fn():
            neg = fairseq.sample_negative_indices(B, T, N, device=DEVICE, generator=g)
            return fairseq_eager(x, y, _values(y, neg))[0]
    else:
        with torch.no_grad():
            neg = fairseq.sample_negative_indices(B, T, N, device=DEVICE, generator=g)
            ours = fairseq.contrastive_loss(x, y, neg)
            want, correct = fairseq_eager(x, y, _values(y, neg))
        _close(ours.loss, want, "fairseq")
        assert int(ours.correct) == int(correct)

        def loss_fn():
            neg = fairseq.sample_negative_indices(B, T, N, device=DEVICE, generator=g)
            return fairseq.contrastive_loss(x, y, neg).loss

    measure(benchmark, case, *_step(loss_fn, (x, y)))


@pytest.mark.parametrize("provider", ["speechbrain", "cpc-fast"])
def test_speechbrain(benchmark, provider):
    case = Case(
        "SpeechBrain wav2vec 2.0 sampler + loss fwd+bwd fp32",
        provider,
        "speechbrain",
        f"B={B} T={T} N={N} C={C}{CPU_NOTE}",
    )
    x, y = _pair(2, (B, T, C))
    g = _generator(3)
    ours = speechbrain.ContrastiveLoss(0.1)
    if provider == "speechbrain":

        def loss_fn():
            negs = speechbrain.sample_negatives(y, N, generator=g)
            return speechbrain_eager(x, y, negs)[0]
    else:
        with torch.no_grad():
            neg = speechbrain.sample_negative_indices(B, T, N, device=DEVICE, generator=g)
            got, accuracy = ours(x, y, neg)
            want, want_accuracy = speechbrain_eager(x, y, _values(y, neg))
        _close(got, want, "speechbrain")
        assert float(accuracy) == float(want_accuracy)

        def loss_fn():
            neg = speechbrain.sample_negative_indices(B, T, N, device=DEVICE, generator=g)
            return ours(x, y, neg)[0]

    measure(benchmark, case, *_step(loss_fn, (x, y)))


SPEC_F, SPEC_T, PER_STEP, PROJ = 80, 1000, 4, 128
STEPS = SPEC_T // PER_STEP


@functools.cache
def _nemo_inputs():
    g = _generator(4)
    spec = torch.randn(B, SPEC_F, SPEC_T, device=DEVICE, generator=g)
    picks = torch.rand(B, STEPS, device=DEVICE, generator=g).argsort(1)[:, : STEPS // 2]
    steps = torch.zeros(B, STEPS, device=DEVICE).scatter_(1, picks, 1.0)  # half the steps
    spec_mask = steps.repeat_interleave(PER_STEP, 1).unsqueeze(1).expand(B, SPEC_F, SPEC_T)
    out = torch.randn(B, STEPS, PROJ, device=DEVICE, generator=g).requires_grad_()
    module = nemo.ContrastiveLoss(SPEC_F, PROJ, PER_STEP, N).to(DEVICE)
    return spec, spec_mask.contiguous(), out, module


def nemo_eager(module, spec, spec_mask, out, neg=None, generator=None):
    """NeMo's same-utterance forward: targets folded and projected, masked steps folded into
    (B, T'_m, C), one multinomial draw of step numbers per row position shared by the B
    utterances (or the given (M, N) flat indices), cosine / 0.1, CE summed, x 16 / B."""
    targets = module.target_proj(spec.transpose(1, 2).reshape(B, STEPS, -1))  # (B, T', P)
    masked = spec_mask.transpose(1, 2).reshape(B, STEPS, -1).mean(-1) > module.mask_threshold
    y = targets[masked].view(B, -1, PROJ).transpose(0, 1)  # (T'_m, B, P)
    x = out[masked].view(B, -1, PROJ).transpose(0, 1)
    per = y.shape[0]
    if neg is None:
        draw = torch.multinomial(torch.ones(per, per, device=DEVICE), N, generator=generator)
        negs = y[draw.view(-1)].view(per, N, B, PROJ).permute(1, 0, 2, 3)  # (N, T'_m, B, P)
    else:  # (M, N) flat b·T' + t in (b, t) row order -> (N, T'_m, B, P)
        flat = targets.reshape(B * STEPS, PROJ)
        negs = flat[neg].view(B, per, N, PROJ).permute(2, 1, 0, 3)
    logits = _wav2vec_logits(x.reshape(-1, PROJ), y.reshape(-1, PROJ), negs.reshape(N, -1, PROJ))
    logits = (logits / module.logit_temp).transpose(0, 1)
    target = logits.new_zeros(logits.size(0), dtype=torch.long)
    return F.cross_entropy(logits, target, reduction="sum") * (module.multiplier / B)


@pytest.mark.parametrize("provider", ["nemo", "cpc-fast"])
def test_nemo(benchmark, provider):
    case = Case(
        "NeMo contrastive sampler + loss fwd+bwd fp32",
        provider,
        "nemo",
        f"B={B} F={SPEC_F} T={SPEC_T} T'={STEPS} ({STEPS // 2} masked) N={N} P={PROJ}{CPU_NOTE}",
    )
    spec, spec_mask, out, module = _nemo_inputs()
    g = _generator(5)
    if provider == "nemo":

        def loss_fn():
            return nemo_eager(module, spec, spec_mask, out, generator=g)
    else:
        with torch.no_grad():
            got = module(spec, spec_mask, out, generator=_generator(6))
            masked = spec_mask[:, 0, ::PER_STEP] > 0
            neg = nemo.sample_negative_indices(masked, N, generator=_generator(6))
            want = nemo_eager(module, spec, spec_mask, out, neg=neg)
        _close(got, want, "nemo")

        def loss_fn():
            return module(spec, spec_mask, out, generator=g)

    measure(benchmark, case, *_step(loss_fn, (out, *module.parameters())))


K, S, AR, D_ENC, N_CPC = 12, 128, 256, 256, 128
W = S - K


def cpc_audio_eager(criterion, c, z, neg):
    """CPCUnsupersivedCriterion's forward from its formula: the summed per-step losses."""
    negatives = z.reshape(-1, D_ENC)[neg[:, 0].transpose(1, 2)]  # (B, N, W, D)
    label = torch.zeros(B * W, dtype=torch.long, device=DEVICE)
    total = 0
    for k in range(1, K + 1):
        pred = criterion.wPrediction.predictors[k - 1](c[:, :W])  # (B, W, D)
        cand = torch.cat([z[:, k : k + W].unsqueeze(1), negatives], 1)  # (B, N + 1, W, D)
        scores = (pred.unsqueeze(1) * cand).mean(3).permute(0, 2, 1).reshape(B * W, -1)
        total = total + F.cross_entropy(scores, label)
    return total


@pytest.mark.parametrize("provider", ["cpc_audio", "cpc-fast"])
def test_cpc_audio_module(benchmark, provider):
    case = Case(
        "CPC_audio criterion module fwd+bwd fp32",
        provider,
        "cpc_audio",
        f"B={B} S={S} K={K} AR={AR} D={D_ENC} N={N_CPC}{CPU_NOTE}",
    )
    c, z = _pair(7, (B, S, AR))
    torch.manual_seed(8)
    criterion = cpc_audio.CPCUnsupersivedCriterion(K, AR, D_ENC, N_CPC).to(DEVICE)
    g = _generator(9)
    if provider == "cpc_audio":

        def loss_fn():
            neg = cpc_audio.sample_negative_indices(B, S, W, N_CPC, device=DEVICE, generator=g)
            return cpc_audio_eager(criterion, c, z, neg)
    else:
        with torch.no_grad():
            got = criterion(c, z, None, generator=_generator(10))[0].sum()
            neg = cpc_audio.sample_negative_indices(
                B, S, W, N_CPC, device=DEVICE, generator=_generator(10)
            )
            want = cpc_audio_eager(criterion, c, z, neg)
        _close(got, want, "cpc_audio")

        def loss_fn():
            return criterion(c, z, None, generator=g)[0].sum()

    measure(benchmark, case, *_step(loss_fn, (c, z, *criterion.parameters())))
