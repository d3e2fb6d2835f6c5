"""Study: can K ``sup`` units train as one batched model (stacked weights, ``torch.func.vmap``)
with each unit's bits unchanged, and how fast would it be? (issue 20, item 4)

The demo's size: the tiny synthetic corpus's LFBE, the paper's recognizer, batch 8, Adam at
the tiny preset's lr, one CPU thread. K units = K runs of one fold (seeds ``0..K-1``): each its
own initial weights and shuffle. Two ways to train them for ``--epochs`` epochs:

  one at a time   each unit alone, its batches padded to their own longest utterance (what
                  :func:`cpc_fast.emotion.train.fit` does);
  stacked         the K units' weights stacked (``torch.func.stack_module_state``), one
                  ``vmap``-ed forward and backward per step over the K units' batches, padded
                  to the longest utterance of the K batches; one Adam over the stacked weights.

Identity is checked with dropout off (so that the random masks, which vmap draws otherwise,
are not what differs) and nothing else changed: the final weights of every unit compared bit
for bit, and the largest difference printed. Speed is measured with dropout on, as trained:
units per minute of each way (training only: no validation, checkpoints or start-up).

    flock /tmp/cpu.lock python bench/study_stacked_units.py --units 5 --epochs 10

Not a benchmark suite (no ``bench_`` prefix): a study whose answer is in docs/benchmarks.md
("Stacked weights, rejected").
On the 2-core AMD EPYC VM (torch 2.13, 5 units x 110 steps): not bit-identical (3.5e-5 with
dropout off) and slower, 6.6 against 11.8 units/min (no vmap rule for CPU attention, so it
runs unit by unit inside vmap); the first pass's times include the warm-up.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from cpc_fast.config import experiment as presets
from cpc_fast.data.labelled import LabelScaler
from cpc_fast.emotion.experiment import open_corpus
from cpc_fast.features.extract import lfbe_features
from cpc_fast.losses.ccc import ccc_loss
from cpc_fast.models.recognizer import (
    EmotionRecognizer,
    RecognizerConfig,
    frame_mask,
    masked_mean_std,
)


class _Unchecked(EmotionRecognizer):
    """The recognizer's arithmetic without its argument checks (``lengths.min() < 1`` is
    control flow on a tensor's value, which vmap refuses): the stacked way's template."""

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = frame_mask(lengths, features.shape[1])  # (B, L)
        x = (features - self.input_mean) / self.input_std
        mean, std = masked_mean_std(self.attention(x, mask), mask, self.config.std_eps)
        return torch.cat([mean, std], dim=-1)  # (B, 2 D_in)


def _orders(train: tuple[int, ...], seeds: list[int], epochs: int, batch: int) -> list[list]:
    """Each unit's batches, epoch after epoch: (K, steps) lists of indices (same step count:
    every unit shuffles the same training set)."""
    out = []
    for seed in seeds:
        steps = []
        for epoch in range(epochs):
            g = torch.Generator().manual_seed(seed * 1000 + epoch)
            order = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
            steps += [order[b : b + batch] for b in range(0, len(order), batch)]
        out.append([s for s in steps if len(s) >= 2])
    return out


def _pad(features, chunks: list[list[int]], length: int | None = None):
    """(x (K, B, L, D), lengths (K, B)) of K equal-sized chunks, L = ``length`` or their
    longest utterance."""
    lengths = [[len(features[i]) for i in c] for c in chunks]
    longest = length or max(max(row) for row in lengths)
    x = np.zeros((len(chunks), len(chunks[0]), longest, features.dim), np.float32)
    for k, chunk in enumerate(chunks):
        for row, i in enumerate(chunk):
            x[k, row, : lengths[k][row]] = features[i]
    return torch.from_numpy(x), torch.tensor(lengths, dtype=torch.int64)


def _models(config: RecognizerConfig, seeds: list[int], stats) -> list[EmotionRecognizer]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = EmotionRecognizer(config)
        model.set_input_normalization(*stats)
        models.append(model)
    return models


def one_at_a_time(models, features, targets, orders, lr: float) -> list[dict]:
    finals = []
    for model, steps in zip(models, orders, strict=True):
        model = copy.deepcopy(model).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
        for chunk in steps:
            x, lengths = _pad(features, [chunk])
            loss = ccc_loss(model(x[0], lengths[0]), targets[chunk])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return finals


def stacked(models, features, targets, orders, lr: float) -> list[dict]:
    params, buffers = stack_module_state([copy.deepcopy(m).train() for m in models])
    template = _Unchecked(models[0].config).to("meta")
    leaves = [p.requires_grad_() for p in params.values()]
    optimizer = torch.optim.Adam(leaves, lr=lr, weight_decay=1e-5)

    def unit_loss(p, b, x, lengths, y):
        return ccc_loss(functional_call(template, (p, b), (x, lengths)), y)

    losses = vmap(unit_loss, randomness="different")
    for step in range(len(orders[0])):
        chunks = [steps[step] for steps in orders]
        x, lengths = _pad(features, chunks)
        y = torch.stack([targets[c] for c in chunks])
        optimizer.zero_grad(set_to_none=True)
        losses(params, buffers, x, lengths, y).sum().backward()  # units are independent
        optimizer.step()
    return [
        {**{k: v[u].detach() for k, v in params.items()}, **{k: v[u] for k, v in buffers.items()}}
        for u in range(len(models))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = presets.tiny(dataset="synthetic", setups=("sup",))
    corpus = open_corpus(config)
    with tempfile.TemporaryDirectory() as cache:
        corpus.prepare(Path(cache) / "prepared", workers=1)
        features = lfbe_features(corpus, cache)
        fold = corpus.folds(config.validation, config.split_seed)[0]
        scaler = LabelScaler.fit(corpus.labels(fold.train))
        targets = torch.from_numpy(np.asarray(scaler.transform(corpus.labels()), np.float32))
        stats = tuple(
            torch.as_tensor(a, dtype=torch.float32) for a in features.mean_std(fold.train)
        )
        seeds = list(range(args.units))
        orders = _orders(fold.train, seeds, args.epochs, config.batch_size)
        steps = len(orders[0])
        print(f"{args.units} units, {steps} steps each, fold {fold.name}, 1 thread")
        for dropout, what in ((0.0, "identity (dropout off)"), (0.2, "speed (dropout 0.2)")):
            recognizer = RecognizerConfig(input_dim=features.dim, dropout=dropout)
            models = _models(recognizer, seeds, stats)
            seconds, finals = {}, {}
            for name, way in (("one at a time", one_at_a_time), ("stacked", stacked)):
                start = time.perf_counter()
                finals[name] = way(models, features, targets, orders, config.lr)
                seconds[name] = time.perf_counter() - start
            a, b = finals["one at a time"], finals["stacked"]
            same = all(torch.equal(a[u][k], b[u][k]) for u in range(args.units) for k in a[u])
            worst = max(
                (a[u][k] - b[u][k]).abs().max().item() for u in range(args.units) for k in a[u]
            )
            print(f"-- {what}: bit-identical {same}, largest weight difference {worst:.3g}")
            for name, s in seconds.items():
                print(f"   {name:14s} {s:7.2f} s  {args.units / s * 60:7.1f} units/min")
            print(
                f"   stacked / one at a time: {seconds['one at a time'] / seconds['stacked']:.2f}x"
            )


if __name__ == "__main__":
    main()
