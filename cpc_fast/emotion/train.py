"""Training one recognizer (one setup, fold and run): the paper's recipe.

Adam (lr 2e-4, weight decay 1e-5), CCC loss on z-scored labels, a fixed number of epochs;
after every epoch the model is scored on the validation set (CCC over the WHOLE set, the
average of the three dimensions) and the best epoch's weights are kept for the test.

Two kinds of input, one loop:

* :class:`FeatureBatches`: cached features (LFBE or frozen CPC contexts), zero-padded to
  (B, L, D) with frame lengths;
* :class:`WaveBatches`: raw waveforms for the ``joint`` setup, zero-padded with
  ``pad_collate``, frame lengths = samples // 160.

Distributed (``--gpus N``): the model is wrapped in DistributedDataParallel, each epoch's
training indices are split by a ``DistributedSampler`` (seeded, ``set_epoch``), and every
evaluation splits its utterances across ranks without padding (rank r takes items r, r + W,
...) and gathers the predictions, so each utterance is scored exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from cpc_fast.data.batching import pad_collate
from cpc_fast.data.labelled import EmotionCorpus
from cpc_fast.features.cache import FeatureSet
from cpc_fast.losses.ccc import ccc, ccc_loss
from cpc_fast.losses.config import LossConfig
from cpc_fast.models.loading import unwrap
from cpc_fast.training.checkpointer import Checkpointer
from cpc_fast.training.distributed import DistEnv, wrap_ddp
from cpc_fast.training.guard import NonFiniteGuard
from cpc_fast.training.preemption import Preempted, StopVote, deferred, requested

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]
_UPLOAD_SHARE = 0.25  # of a GPU's free memory that cached frames may take (FeatureBatches)


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`fit` trains one recognizer (from the experiment's configuration); ``loss``
    is the joint setup's InfoNCE (its CPC pre-training preset's)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-5
    seed: int = 0
    joint_lambda: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)
    eval_frames: int = 32768  # frames per evaluation batch (feature setups)


class FeatureBatches:
    """Batches of cached features: ((x (B, L, D), frames (B,)), y (B, 3)), zero-padded to the
    batch's longest utterance.

    On the CPU a batch is copied from the cache (memory-mapped, read as needed). On another
    device (:meth:`on_device`) every frame and label is uploaded once, in the cache's dtype,
    with one zero row after the frames; a batch is then gathered there from its frames' row
    numbers (B, L), padding pointing at the zero row, and made float32: one small pinned,
    non-blocking upload per step, and the same values as the CPU's copy. Frames that would
    take more than a quarter of a GPU's free memory (the hidden states of an SSL model stay
    on disk: gigabytes an hour) are copied per batch as on the CPU instead.
    """

    def __init__(self, features: FeatureSet, targets: np.ndarray) -> None:
        self.features = features
        self.targets = np.asarray(targets, np.float32)  # (N, 3) scaled labels
        self._lengths = features.lengths()  # (N,) frames per utterance
        self._device: torch.device | None = None
        self._frames = self._labels = torch.empty(0)  # on the device: (frames + 1, D), (N, 3)

    def on_device(self, device: torch.device) -> FeatureBatches:
        """These batches made on ``device``: the same object for the CPU (or frames too
        large to upload), else a copy whose frames and labels live there."""
        if device.type == "cpu":
            return self
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.features.nbytes > _UPLOAD_SHARE * free:
                return self
        return self._gathered_on(device)

    def _gathered_on(self, device: torch.device) -> FeatureBatches:
        moved = FeatureBatches(self.features, self.targets)
        zero = np.zeros((1, self.features.dim), self.features.dtype)
        frames = torch.from_numpy(np.concatenate([*self.features.blocks, zero]))
        moved._device = device
        moved._frames = frames.to(device)  # (frames + 1, D): the last row pads
        moved._labels = torch.from_numpy(self.targets).to(device)  # (N, 3)
        return moved

    def length(self, index: int) -> int:
        return int(self._lengths[index])

    def batch(self, indices: Sequence[int]) -> Batch:
        if self._device is not None:
            return self._gather(np.asarray(indices, np.int64))
        lengths = [self.length(i) for i in indices]
        x = np.zeros((len(indices), max(lengths), self.features.dim), np.float32)
        for row, i in enumerate(indices):
            x[row, : lengths[row]] = self.features[i]
        inputs = (torch.from_numpy(x), torch.tensor(lengths, dtype=torch.int64))
        return inputs, torch.from_numpy(self.targets[list(indices)])

    def _gather(self, indices: np.ndarray) -> Batch:
        """The batch on the device from one upload of (B·L + 2B,) int64 row numbers."""
        lengths = self._lengths[indices].astype(np.int64)  # (B,)
        steps = np.arange(int(lengths.max()))  # (L,)
        rows = self.features.offsets[indices][:, None] + steps  # (B, L)
        rows = np.where(steps < lengths[:, None], rows, self._frames.shape[0] - 1)
        host = torch.from_numpy(np.concatenate([rows.ravel(), lengths, indices]))
        if self._device.type == "cuda":
            host = host.pin_memory()  # the copy below then leaves the host free
        numbers = host.to(self._device, non_blocking=True)
        b, length = len(indices), len(steps)
        x = self._frames[numbers[: b * length]].view(b, length, -1).float()  # (B, L, D)
        frames, which = numbers[b * length : b * length + b], numbers[b * length + b :]
        return (x, frames), self._labels[which]


class WaveBatches:
    """Zero-padded waveform batches: ((wave (B, T), samples (B,)), y (B, 3))."""

    def __init__(self, corpus: EmotionCorpus, targets: np.ndarray, hop: int = 160) -> None:
        self.corpus = corpus
        self.targets = np.asarray(targets, np.float32)
        self.hop = hop
        self._lengths: dict[int, int] = {}  # frames per utterance: decoded once, not per epoch

    def length(self, index: int) -> int:
        if index not in self._lengths:
            self._lengths[index] = int(self.corpus.wave(index).shape[0]) // self.hop
        return self._lengths[index]

    def batch(self, indices: Sequence[int]) -> Batch:
        # No rounding up to a multiple of the hop: a lone utterance then runs exactly as in
        # `cpc-fast predict` (zero samples past its end would change its last frame).
        wave, lengths = pad_collate([self.corpus.wave(i) for i in indices])
        inputs = (torch.from_numpy(wave), torch.from_numpy(lengths))
        return inputs, torch.from_numpy(self.targets[list(indices)])


@dataclass
class FitResult:
    best_epoch: int
    best_validation: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def ccc_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """CCC of (N, 3) predictions over the whole set, in float64: avg, act, val, dom."""
    values = ccc(
        torch.from_numpy(np.asarray(pred, np.float64)),
        torch.from_numpy(np.asarray(target, np.float64)),
    ).tolist()
    return {
        "ccc_avg": float(np.mean(values)),
        "ccc_act": values[0],
        "ccc_val": values[1],
        "ccc_dom": values[2],
    }


def _forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], joint: bool):
    """(predictions (B, 3), CPCOutput or None)."""
    if joint:
        return model(*inputs)
    return model(*inputs), None


def _length_batches(
    indices: Sequence[int], length: Callable[[int], int], frames: int, max_items: int
) -> Iterator[list[int]]:
    """Evaluation batches sorted by length, at most ``frames`` padded frames each."""
    lengths = {i: length(i) for i in indices}
    batch: list[int] = []
    for i in sorted(indices, key=lengths.__getitem__):
        longest = max(lengths[i], 1)
        if batch and (len(batch) + 1) * longest > frames or len(batch) >= max_items:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.inference_mode()
def predict_indices(
    model: nn.Module,
    data: FeatureBatches | WaveBatches,
    indices: Sequence[int],
    env: DistEnv,
    *,
    joint: bool,
    eval_frames: int = 32768,
) -> np.ndarray:
    """(len(indices), 3) scaled predictions in the order of ``indices``, on every rank.

    The joint model scores each utterance alone, so its test predictions are exactly what
    ``cpc-fast predict`` gives for the file; feature batches are padded, which the masked
    recognizer ignores.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    mine = list(indices)[env.rank :: env.world_size]
    max_items = 1 if joint else 1 << 30
    pairs: list[tuple[int, np.ndarray]] = []
    for chunk in _length_batches(mine, data.length, eval_frames, max_items):
        inputs, _ = data.batch(chunk)
        pred, _ = _forward(model, tuple(t.to(env.device) for t in inputs), joint)
        pairs.extend(zip(chunk, pred.float().cpu().numpy(), strict=True))
    if env.distributed:
        gathered: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(env.world_size)]
        dist.all_gather_object(gathered, pairs)
        pairs = [p for part in gathered for p in part]
    by_index = dict(pairs)
    model.train(was_training)
    return np.stack([by_index[i] for i in indices]).astype(np.float64)


@dataclass
class FitProgress:
    """Where a recognizer's training is, after an epoch: saved in state.pt as a whole."""

    epoch: int = 0
    best_epoch: int = -1
    best_validation: dict[str, float] = field(default_factory=lambda: {"ccc_avg": -math.inf})
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # weights, on the CPU
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # training time before this process took over


def fit(
    model: nn.Module,
    data: FeatureBatches | WaveBatches,
    train: Sequence[int],
    validation: Sequence[int],
    settings: TrainSettings,
    env: DistEnv,
    *,
    joint: bool = False,
    log: Callable[[int, str, dict[str, float]], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Checkpointer | None = None,
) -> tuple[nn.Module, FitResult]:
    """Trains ``model`` in place; returns it with the best validation epoch's weights loaded.

    ``log(epoch, split, values)`` receives the per-epoch metrics (rank 0 should pass one).
    With a ``checkpoint``, every epoch ends with a checkpoint and a run that finds one
    resumes after its epoch, exactly (the joint setup's negatives included). A NaN or
    infinite loss or gradient raises :class:`~cpc_fast.errors.TrainingDiverged` at the end
    of its epoch, naming the batch, before that epoch is validated or checkpointed. A
    preemption signal (:mod:`cpc_fast.training.preemption`) raises
    :class:`~cpc_fast.training.preemption.Preempted` before the next batch, the ranks agreed:
    the epoch in flight is dropped, the last epoch's checkpoint is what a resumed run starts
    from (a signal during an epoch's validation or checkpoint lets them finish first).
    """
    start = time.perf_counter()
    fitting = _Fitting(model, data, train, validation, settings, env, joint, checkpoint)
    with deferred():
        for epoch in range(fitting.progress.epoch + 1, settings.epochs + 1):
            train_metrics = fitting.train_epoch(epoch)
            scores = fitting.validate()
            if log is not None:
                log(epoch, "train", train_metrics)
                log(epoch, "validation", scores)
            fitting.record(epoch, train_metrics, scores)
            fitting.save(epoch, start)
            if on_epoch is not None:
                on_epoch(epoch, scores)
        fitting.vote.close()
    return fitting.finish(start)


class _Fitting:
    """The phases of :func:`fit`, one method each: set-up and resume, an epoch's training, its
    validation, keeping the best epoch, the checkpoint, the end."""

    def __init__(self, model, data, train, validation, settings, env, joint, checkpoint) -> None:
        self.data, self.train, self.validation = data, train, validation
        self.settings, self.env, self.joint, self.checkpoint = settings, env, joint, checkpoint
        torch.manual_seed(settings.seed)
        self.model = model.to(env.device)
        if isinstance(data, FeatureBatches):  # on a GPU: the features uploaded once, not per step
            self.data = data.on_device(env.device)
        self.train_model = wrap_ddp(self.model, env)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.sampler = DistributedSampler(
            range(len(train)),
            num_replicas=env.world_size,
            rank=env.rank,
            shuffle=True,
            seed=settings.seed,
        )
        # The joint setup's negatives: a generator of each rank's own.
        self.generator = torch.Generator(device=env.device).manual_seed(settings.seed + env.rank)
        self.progress = FitProgress()
        if checkpoint is not None and checkpoint.exists():
            self.progress, rank_state = checkpoint.load(self.model, self.optimizer, FitProgress)
            if "generator" in rank_state:  # absent when the number of processes changed
                self.generator.set_state(rank_state["generator"])
        self.earlier_seconds = self.progress.seconds
        self.vote = StopVote(env)  # every rank, here: a collective under DDP
        self.validation_targets = data.targets[list(validation)]
        self.names = ("loss", "ccc_loss", "info_nce") if joint else ("loss", "ccc_loss")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard of the epoch's order; the mean of each loss term.
        A NaN or infinite loss or gradient raises here: a diverged epoch is neither validated
        nor checkpointed, the last checkpoint stays."""
        # This epoch's order: the DistributedSampler's shuffle of (seed, epoch), one shard each.
        self.sampler.set_epoch(epoch)
        order = [self.train[i] for i in self.sampler]
        self.train_model.train()
        # Summed on the device: no step waits for the GPU; so are the NaN/Inf flags.
        totals = torch.zeros(len(self.names), dtype=torch.float64, device=self.env.device)
        guard = NonFiniteGuard(
            self.env,
            name=lambda batch, e=epoch: f"epoch {e}, batch {batch}",
            hint=lambda: _kept(self.progress.epoch, self.checkpoint),
        )
        steps = 0
        batch_size = self.settings.batch_size
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]
            if len(chunk) < 2:
                continue  # a CCC needs two samples; same on every rank (equal shard sizes)
            if self.vote.poll():
                raise Preempted(requested(), self._kept_on_preemption())
            totals += self._step(chunk, guard)
            steps += 1
        means = {k: v / max(steps, 1) for k, v in zip(self.names, totals.tolist(), strict=True)}
        guard.check()
        return means

    def _step(self, chunk: list[int], guard: NonFiniteGuard) -> torch.Tensor:
        """One optimizer step on the utterances ``chunk``; its loss terms (float64, on the
        device)."""
        # The batch on the device: features or waves, and z-scored labels.
        inputs, y = self.data.batch(chunk)
        inputs = tuple(t.to(self.env.device, non_blocking=True) for t in inputs)
        y = y.to(self.env.device, non_blocking=True)
        # CCC loss, plus λ · InfoNCE over the valid frames for the joint setup.
        pred, out = _forward(self.train_model, inputs, self.joint)
        loss_ccc = ccc_loss(pred.float(), y)
        loss = loss_ccc
        if self.joint:
            frames = inputs[1] // unwrap(self.model).cpc.frame_hop
            nce = self.settings.loss.padded(
                out.predictions, out.z, frames, generator=self.generator
            )
            loss = loss + self.settings.joint_lambda * nce
        # Backward and Adam (the guard notes a NaN/Inf loss or gradient on the device).
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        guard.observe(loss, self.model.parameters())
        self.optimizer.step()
        terms = (loss, loss_ccc, nce) if self.joint else (loss, loss_ccc)
        return torch.stack([t.detach() for t in terms]).double()

    def validate(self) -> dict[str, float]:
        """CCC over the whole validation set."""
        pred = predict_indices(
            self.model,
            self.data,
            self.validation,
            self.env,
            joint=self.joint,
            eval_frames=self.settings.eval_frames,
        )
        return ccc_scores(pred, self.validation_targets)

    def record(self, epoch: int, train_metrics: dict, scores: dict[str, float]) -> None:
        """The epoch in the history; its weights kept if it is the best so far."""
        progress = self.progress
        progress.history.append(
            {"epoch": epoch, **train_metrics, **{f"val_{k}": v for k, v in scores.items()}}
        )
        if scores["ccc_avg"] > progress.best_validation["ccc_avg"] or not progress.best_state:
            progress.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            progress.best_epoch, progress.best_validation = epoch, scores

    def save(self, epoch: int, start: float) -> None:
        """The checkpoint: a run killed from here on resumes with the next epoch."""
        self.progress.epoch = epoch
        self.progress.seconds = self.earlier_seconds + time.perf_counter() - start
        if self.checkpoint is not None:
            self.checkpoint.save(
                self.model,
                self.optimizer,
                self.progress,
                rank_state={"generator": self.generator.get_state()},
            )

    def _kept_on_preemption(self) -> str | None:
        epoch = self.progress.epoch
        if self.checkpoint is None or epoch == 0:
            return None
        return f"epoch {epoch} is saved in {self.checkpoint.folder}"

    def finish(self, start: float) -> tuple[nn.Module, FitResult]:
        """The model with the best epoch's weights, and what the training did."""
        progress = self.progress
        self.model.load_state_dict(progress.best_state)
        seconds = self.earlier_seconds + time.perf_counter() - start
        result = FitResult(progress.best_epoch, progress.best_validation, progress.history, seconds)
        return self.model, result


def _kept(epoch: int, checkpoint: Checkpointer | None) -> str:
    """What a divergence error adds: which checkpoint stays, what to change."""
    if checkpoint is None or epoch == 0:
        return "; lower `lr` (`joint_lr` for the joint setup)"
    return (
        f"; the checkpoint of epoch {epoch} in {checkpoint.folder} is kept; lower `lr` "
        "(`joint_lr` for the joint setup)"
    )


__all__ = [
    "FeatureBatches",
    "FitProgress",
    "FitResult",
    "TrainSettings",
    "WaveBatches",
    "ccc_scores",
    "fit",
    "predict_indices",
]
