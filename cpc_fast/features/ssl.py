"""Speech SSL features of a whole corpus through the feature cache: what a layer choice
needs of an upstream's hidden states (:mod:`cpc_fast.features.upstream`), for every
utterance, once per upstream, choice and corpus, in float16.

    cache = SSLFeatureCache(corpus, upstream.info, LayerChoice.parse("weighted"), "cache")
    features = cache.build(upstream)        # every part here, then the entry
    # or, spread over processes: cache.build_part(k, upstream) for each part k, anywhere,
    # then cache.finish() once they are all built (the experiment's preparation tasks)

The entry (:class:`~cpc_fast.features.cache.PartedEntry`, kind ``ssl``) is keyed by the
upstream's weights and feature-extractor normalisation, the layer choice, the chunk length,
the precision and the corpus's audio. Its utterances are split into parts of about
:data:`PART_SECONDS` of audio, the unit a worker claims and resumes.

Within a part, utterances (and the chunks of long ones) are sorted by length and run in
zero-padded batches of at most ``batch_seconds`` of padded audio, under
``torch.inference_mode`` and, on a GPU, autocast in ``precision``. Padding changes nothing
(:class:`~cpc_fast.features.upstream.Upstream`): an utterance's features are its own, to
float rounding, whichever utterances share its batch. On a GPU batches of 300 s are the
default (many kernels in one launch); on a CPU one utterance at a time, because batches are
no faster there: the work is matrix products that one utterance already fills (measured
with ``bench/bench_ssl.py``; batches of 4 s tie, of 8 s are slower, their first
convolution's output falling out of the caches). A progress bar counts audio seconds per
second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cpc_fast.data.labelled import EmotionCorpus
from cpc_fast.errors import UserInputError
from cpc_fast.features.cache import FeatureSet, PartedEntry
from cpc_fast.features.upstream import (
    PRECISIONS,
    SAMPLE_RATE,
    Upstream,
    UpstreamInfo,
    chunk_plan,
)
from cpc_fast.models.ssl_layers import LayerChoice

KIND = "ssl"
STORAGE = "float16"  # on disk: half the bytes of float32 (11 significant bits)
PART_SECONDS = 1800.0  # audio per part: a worker's claim, and what a kill can cost
DEFAULT_BATCH_SECONDS = {"cpu": 0.0, "cuda": 300.0}  # 0: one utterance (or chunk) a batch


class SSLFeatureCache:
    """The SSL features of ``corpus`` in the cache under ``cache_dir`` (module docstring).

    Args:
        corpus: the labelled corpus (its prepared cache, when it has one, is read).
        info: the upstream (:attr:`Upstream.info`: nothing of its weights is needed here).
        choice: which hidden states, and how they are combined.
        cache_dir: the feature cache folder.
        chunk_seconds: longer utterances are run in overlapping chunks of this length.
        precision: what the features are computed in: ``fp32`` (always on a CPU), or the
            autocast dtype of a GPU (``bf16``, ``fp16``).
        samples: each utterance's length in samples, when the caller has them.
        part_seconds: audio per part (a layout already on disk takes precedence).
    """

    def __init__(
        self,
        corpus: EmotionCorpus,
        info: UpstreamInfo,
        choice: LayerChoice,
        cache_dir: str | os.PathLike,
        *,
        chunk_seconds: float = 40.0,
        precision: str = "fp32",
        samples: list[int] | None = None,
        part_seconds: float | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision}")
        problem = choice.problem(info.num_states)
        if problem:
            raise UserInputError(f"`ssl_layers` {choice.spec} {problem} ({info.source})")
        self.corpus = corpus
        self.info = info
        self.choice = choice
        self.precision = precision
        self.chunk = max(int(chunk_seconds * SAMPLE_RATE) // info.hop * info.hop, info.hop)
        if self.chunk < 2 * info.receptive_field:
            raise UserInputError(f"`ssl_chunk_seconds` {chunk_seconds} is too short")
        if samples is None:
            samples = [corpus.num_samples(i) for i in range(len(corpus))]
        self.samples = samples
        for i, n in enumerate(self.samples):
            if n < info.receptive_field:
                record = corpus.records[i]
                raise UserInputError(
                    f"{record.source or record.utt_id}: {record.utt_id} has {n} samples, "
                    f"shorter than one frame of {info.model_type} ({info.receptive_field}); "
                    "remove the row"
                )
        self.dim = info.hidden_size * choice.stored_states(info.num_states)
        parts = {
            "features": "ssl-hidden-states",
            "upstream": info.digest,
            "model_type": info.model_type,
            "normalize": info.normalize,
            "layers": choice.spec,
            "chunk_samples": self.chunk,
            "precision": precision,
            "dataset": corpus.fingerprint(),
        }
        frames = [info.frames(n) for n in self.samples]
        self.entry = PartedEntry(
            cache_dir,
            KIND,
            parts,
            frames,
            self.dim,
            dtype=STORAGE,
            bounds=self._bounds(part_seconds or PART_SECONDS),
        )

    def _bounds(self, part_seconds: float) -> list[int]:
        """The first utterance of each part (about ``part_seconds`` of audio each), then N."""
        per_part = part_seconds * SAMPLE_RATE
        bounds, total = [0], 0.0
        for i, n in enumerate(self.samples):
            if total >= per_part * (len(bounds)) and i > bounds[-1]:
                bounds.append(i)
            total += n
        return [*bounds, len(self.samples)]

    @property
    def num_parts(self) -> int:
        return self.entry.num_parts

    def complete(self) -> bool:
        return self.entry.complete()

    def build_part(
        self,
        k: int,
        upstream: Upstream,
        *,
        batch_seconds: float | None = None,
        progress: bool = False,
    ) -> None:
        """Computes part ``k`` (resuming it when a killed build left some of it)."""
        if upstream.info.digest != self.info.digest:
            raise ValueError("this upstream is not the one the cache entry was planned for")
        device = upstream.device.type
        if self.precision != "fp32" and device != "cuda":
            raise ValueError(f"precision {self.precision} needs a CUDA upstream, not {device}")
        upstream.keep_states(self.choice)
        if batch_seconds is None:
            batch_seconds = DEFAULT_BATCH_SECONDS.get(device, DEFAULT_BATCH_SECONDS["cpu"])
        if batch_seconds > 0 and upstream.batchable is None:
            upstream.check_batches()
        budget = int(batch_seconds * SAMPLE_RATE) if upstream.batchable else 0
        name = f"{self.info.model_type} part {k + 1}/{self.num_parts}"

        def resumed(done: int, total: int) -> None:
            if progress:
                tqdm.write(f"{name}: resuming, {done} of {total} utterances done", file=sys.stderr)

        def compute(indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
            return self._compute(indices, upstream, budget, progress, name)

        self.entry.build_part(k, compute, on_resume=resumed)

    def _compute(
        self, indices: list[int], upstream: Upstream, budget: int, progress: bool, name: str
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(i, (frames, D) float32)`` for each utterance of ``indices``, batched by length."""
        autocast = PRECISIONS[self.precision]
        plans = {i: chunk_plan(self.samples[i], self.chunk, self.info) for i in indices}
        pieces = [(i, *chunk) for i in indices for chunk in plans[i]]
        pieces.sort(key=lambda piece: piece[2] - piece[1])  # by length: little padding
        left = {i: len(plan) for i, plan in plans.items()}
        held: dict[int, np.ndarray] = {}  # the chunked utterances being assembled
        total = sum(self.samples[i] for i in indices) / SAMPLE_RATE
        current: tuple[int, np.ndarray] = (-1, np.empty(0, np.float32))

        def normalized(i: int) -> np.ndarray:
            """Utterance ``i`` as the model takes it (a long file's chunks, of one length,
            come one after another: normalised once for all of them)."""
            nonlocal current
            if current[0] != i:
                current = (i, upstream.normalized(self.corpus.wave(i)))
            return current[1]

        with _AudioBar(total, name, progress) as bar:
            for batch in _length_batches(pieces, budget):
                waves = [normalized(i)[a:b] for i, a, b, _, _ in batch]
                outputs = upstream.features(waves, self.choice, autocast)
                for (i, start, _, first, last), x in zip(batch, outputs, strict=True):
                    skip = start // self.info.hop  # the chunk's first frame in the utterance
                    rows = x[first - skip : last - skip]
                    # Each chunk counts for its share of the utterance's own audio.
                    bar.update(
                        (last - first) / self.entry.frames[i] * self.samples[i] / SAMPLE_RATE
                    )
                    left[i] -= 1
                    if len(plans[i]) == 1:
                        yield i, rows
                        continue
                    if i not in held:
                        held[i] = np.empty((self.entry.frames[i], self.dim), np.float32)
                    held[i][first:last] = rows
                    if left[i] == 0:
                        yield i, held.pop(i)

    def finish(self) -> FeatureSet:
        """The entry, once every part is built."""
        return self.entry.finish()

    def build(
        self, upstream: Upstream, *, batch_seconds: float | None = None, progress: bool = False
    ) -> FeatureSet:
        """Every part in this process (those built already skipped), then the entry."""
        for k in range(self.num_parts):
            self.build_part(k, upstream, batch_seconds=batch_seconds, progress=progress)
        return self.finish()


def utterance_features(
    upstream: Upstream,
    wave: np.ndarray,
    choice: LayerChoice,
    chunk_samples: int,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """(frames, D) float32 features of one (n,) 16 kHz waveform, as a cache entry holds
    them before storage: normalised, run whole or chunk by chunk, stitched."""
    info = upstream.info
    if len(wave) < info.receptive_field:
        raise UserInputError(
            f"audio of {len(wave)} samples is shorter than one frame of {info.model_type} "
            f"({info.receptive_field} samples)"
        )
    values = upstream.normalized(wave)
    plan = chunk_plan(len(values), chunk_samples, info)
    out = np.empty(
        (info.frames(len(values)), info.hidden_size * choice.stored_states(info.num_states)),
        np.float32,
    )
    for start, end, first, last in plan:  # one chunk at a time: nothing padded
        (x,) = upstream.features([values[start:end]], choice, autocast)
        skip = start // info.hop
        out[first:last] = x[first - skip : last - skip]
    return out


class SSLFrontEnd(nn.Module):
    """An upstream as the front end of a trained model (``cpc-fast predict``): (1, T)
    16 kHz waveform -> (1, frames, D) features, computed as the cache computed them and
    rounded to its storage dtype, so the recognizer sees what it was trained on."""

    def __init__(self, upstream: Upstream, choice: LayerChoice, chunk_samples: int) -> None:
        super().__init__()
        self.upstream = upstream
        self.model = upstream.model  # registered: .to() moves it
        self.choice = choice
        self.chunk_samples = chunk_samples
        upstream.keep_states(choice)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2 or wave.shape[0] != 1:
            raise ValueError(f"expected one waveform (1, T), got {tuple(wave.shape)}")
        self.upstream.device = wave.device
        x = utterance_features(
            self.upstream, wave[0].float().cpu().numpy(), self.choice, self.chunk_samples
        )
        stored = torch.from_numpy(x.astype(STORAGE).astype(np.float32))
        return stored.to(wave.device).unsqueeze(0)


def _length_batches(pieces: list[tuple], budget: int) -> Iterator[list[tuple]]:
    """Consecutive runs of the length-sorted ``pieces`` whose padded size (count x the
    longest) stays within ``budget`` samples; a longer piece alone; one at a time for a
    budget of 0."""
    batch: list[tuple] = []
    for piece in pieces:
        length = piece[2] - piece[1]
        if batch and (len(batch) + 1) * length > budget:
            yield batch
            batch = []
        batch.append(piece)
    if batch:
        yield batch


class _AudioBar:
    """A tqdm bar in audio seconds (its rate: audio seconds per second), or nothing."""

    def __init__(self, total: float, name: str, show: bool) -> None:
        self.bar: tqdm | None = None
        if show:
            self.bar = tqdm(
                total=round(total, 1),
                desc=name,
                unit=" audio s",
                leave=False,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} audio s "
                "[{elapsed}<{remaining}, {rate_fmt}]",
            )

    def __enter__(self) -> _AudioBar:
        return self

    def update(self, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(seconds)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "DEFAULT_BATCH_SECONDS",
    "KIND",
    "PART_SECONDS",
    "STORAGE",
    "SSLFeatureCache",
    "SSLFrontEnd",
    "utterance_features",
]
