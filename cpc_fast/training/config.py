"""Pre-training configuration: dataclasses whose defaults are the paper's, and presets.

``paper()`` is the paper's setup (Li et al. 2021, Sec. 6.1: Adam, lr 2e-4, weight decay
1e-5, 8 utterances of 10 s per process); ``tiny()`` keeps the architecture with small sizes
so a few hundred steps run on a CPU in a minute or two (tests, the demo, smoke runs).
The resolved configuration is written to ``config.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cpc_fast.errors import UserInputError
from cpc_fast.models.cpc import CPCConfig

FORMATS = ("librispeech", "folder", "synthetic")
CROPS = ("start", "random")

# Fields that may differ when a run resumes: how long to train, how often to report, and
# how to execute. Anything else changed against config.json is a different experiment.
RESUMABLE_FIELDS = frozenset(
    {"epochs", "max_steps", "save_every", "valid_every", "log_every", "workers", "strict", "bf16"}
)


@dataclass
class DataConfig:
    """Where the pre-training audio comes from (used by the CLI; :func:`pretrain` itself
    takes datasets and records this section as given).

    Attributes:
        path: a LibriSpeech root/subset folder or any folder of audio; None = the built-in
            synthetic corpus.
        format: "librispeech", "folder" or "synthetic"; None = detect from ``path``.
        subset: LibriSpeech subset folder name(s), comma-separated; None = train-clean-100
            when present, else the only subset found.
        max_minutes_per_speaker: cap on each speaker's training audio (None = no cap; the
            official train-clean-100 is capped at 25 min already).
        valid_fraction: share of utterances held out for validation, chosen by a hash of
            the utterance id (stable across runs and machines).
        synthetic_*: the built-in corpus: speakers, training and validation utterances per
            speaker, and the (min, max) utterance length in seconds.
    """

    path: str | None = None
    format: str | None = None
    subset: str | None = None
    max_minutes_per_speaker: float | None = None
    valid_fraction: float = 0.02
    synthetic_speakers: int = 24
    synthetic_utterances: int = 60
    synthetic_valid_utterances: int = 2
    synthetic_seconds: tuple[float, float] = (4.0, 14.0)

    def __post_init__(self) -> None:
        self.synthetic_seconds = tuple(float(s) for s in self.synthetic_seconds)
        if self.format is not None and self.format not in FORMATS:
            raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, got {self.format}")
        if self.max_minutes_per_speaker is not None and not self.max_minutes_per_speaker > 0:
            raise UserInputError(
                f"--max-minutes-per-speaker must be positive, got {self.max_minutes_per_speaker}"
            )
        if not 0.0 <= self.valid_fraction < 1.0:
            raise UserInputError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        low, high = self.synthetic_seconds
        if not 0 < low <= high:
            raise UserInputError(f"synthetic_seconds must be 0 < min <= max, got {low}, {high}")
        for name in ("synthetic_speakers", "synthetic_utterances"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.synthetic_valid_utterances < 0:
            raise UserInputError("synthetic_valid_utterances must be 0 or more")


@dataclass
class PretrainConfig:
    """Everything that defines a CPC pre-training run; defaults are the paper's.

    Attributes:
        model: the network and loss sizes (:class:`CPCConfig`).
        data: where the audio comes from (:class:`DataConfig`).
        window_seconds: training window; longer utterances are cut, shorter ones
            repeat-padded (the paper: 10 s).
        crop: "start" cuts long utterances at the window length (the paper); "random" takes
            a random window each epoch (seeded by run seed, epoch and utterance index).
        batch_size: utterances per process per step (the paper: 8 on each of 8 GPUs).
        lr, weight_decay: Adam (the paper: 2e-4, 1e-5; decay as an L2 term, as torch's Adam).
        epochs: passes over the training set. The paper reports 50 training epochs.
        max_steps: stop after this many optimizer steps (None = run all epochs).
        seed: model initialisation, shuffling, crops and negative sampling derive from it.
        bf16: bf16 autocast on CUDA; None = on when the GPU supports it. Always fp32 on CPU.
        normalize: standardise each window (zero mean, unit variance) before the encoder.
        workers: DataLoader worker processes per training process.
        log_every: steps between train-metric rows (and progress-bar refreshes).
        save_every: steps between checkpoints; 0 = at the end of each epoch (and the run).
        valid_every: steps between validations; 0 = at the end of each epoch (and the run).
        min_seconds: utterances shorter than this are skipped and counted (default 0.01 s:
            one 160-sample frame, the least the encoder accepts).
        strict: stop at the first bad file instead of skipping it.
    """

    model: CPCConfig = field(default_factory=CPCConfig)
    data: DataConfig = field(default_factory=DataConfig)
    window_seconds: float = 10.0
    crop: str = "start"
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-5
    epochs: int = 50
    max_steps: int | None = None
    seed: int = 0
    bf16: bool | None = None
    normalize: bool = False
    workers: int = 4
    log_every: int = 50
    save_every: int = 0
    valid_every: int = 0
    min_seconds: float = 0.01
    strict: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = CPCConfig.from_dict(self.model)
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.validate()

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.model.sample_rate)

    @property
    def min_samples(self) -> int:
        return max(self.model.frame_hop, round(self.min_seconds * self.model.sample_rate))

    def validate(self) -> None:
        """Raises :class:`UserInputError` naming the first invalid option."""
        if self.crop not in CROPS:
            raise UserInputError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop}")
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name in ("save_every", "valid_every", "workers"):
            if getattr(self, name) < 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be 0 or more")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserInputError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"--lr must be positive, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserInputError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        frames = self.window_samples // self.model.frame_hop
        if frames < self.model.prediction_steps + 2:
            raise UserInputError(
                f"a {self.window_seconds}-s window gives {frames} frames; predicting "
                f"{self.model.prediction_steps} steps ahead needs at least "
                f"{self.model.prediction_steps + 2}"
            )
        if not self.min_seconds >= 0:
            raise UserInputError(f"min_seconds must be 0 or more, got {self.min_seconds}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["data"]["synthetic_seconds"] = list(self.data.synthetic_seconds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserInputError(f"unknown pretrain config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> PretrainConfig:
        """A copy with some fields changed (None values are ignored, for CLI overrides)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def paper() -> PretrainConfig:
    """The paper's pre-training setup (LibriSpeech train-clean-100 on 8 GPUs x 8 windows)."""
    return PretrainConfig()


def tiny() -> PretrainConfig:
    """The same architecture at toy sizes: about 1,400 steps in under a minute on a CPU.

    0.64-s windows (64 frames), 64-d latents and contexts, 16 negatives, 4 utterances per
    step, 30 epochs over a small synthetic corpus (8 speakers x 24 utterances of 0.5-1.5 s).
    Two departures from the paper make so few steps learn; both were measured with the
    demo's pipeline (this preset's CPC frozen, the ``pre`` setup on the tiny synthetic
    emotion corpus, CCC avg over 5 folds x 2 runs; ``Sup`` on LFBE reaches .51):

    * ``encoder_norm="channel"``: the CPC reference code's ChannelNorm, which normalises
      each frame's channels (a LayerNorm per frame). Without a norm, 480 steps leave the
      InfoNCE near chance (validation accuracy .08 against .19-.21 with it). A norm of each
      channel over time (this preset's earlier choice) must not be used: it removes the
      utterance-level loudness, spectral tilt and pitch level that carry activation, and
      its contexts reach CCC .02-.05 against .51-.54 with the per-frame norm.
    * Adam's lr is 1e-3 (the paper: 2e-4).

    30 epochs (1,440 steps, about 30 s on 2 cores) rather than 10: .51-.54 over five
    pre-training seeds against .50 for one at 10 epochs.
    """
    return PretrainConfig(
        model=CPCConfig(encoder_dim=64, context_dim=64, num_negatives=16, encoder_norm="channel"),
        data=DataConfig(
            synthetic_speakers=8,
            synthetic_utterances=24,
            synthetic_valid_utterances=1,
            synthetic_seconds=(0.5, 1.5),
        ),
        window_seconds=0.64,
        batch_size=4,
        lr=1e-3,
        epochs=30,
        workers=0,
        log_every=10,
    )


PRESETS = {"paper": paper, "tiny": tiny}


def preset(name: str) -> PretrainConfig:
    """The preset called ``name`` ("paper" or "tiny")."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise UserInputError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ, ignoring :data:`RESUMABLE_FIELDS`."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_FIELDS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{key}.{sub}" for sub in config_differences(a, b))
        elif a != b:
            out.append(key)
    return out


__all__ = [
    "CROPS",
    "FORMATS",
    "PRESETS",
    "RESUMABLE_FIELDS",
    "DataConfig",
    "PretrainConfig",
    "config_differences",
    "paper",
    "tiny",
    "preset",
]
