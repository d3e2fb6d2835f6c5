"""Which hidden states of a speech SSL model feed the recognizer, and the learned layer
weights of SUPERB.

A transformer upstream with L layers has L + 1 hidden states: state 0 is the encoder's input
(the projected CNN features, after the positional convolution), state l the output of layer
l. :class:`LayerChoice` is one of

* ``K``: hidden state K alone;
* ``mean`` (``mean:A-B``): the mean of all hidden states (or of states A..B), taken once,
  at extraction;
* ``weighted`` (``weighted:A-B``): SUPERB's learned weighted sum (Yang et al., Interspeech
  2021), ``sum_l softmax(w)_l h_l``, with the weights ``w`` trained with the recognizer
  (:class:`WeightedLayerSum`). The cache then holds every chosen state: (L_i, n H) per
  utterance, state after state.

A single state or the mean stores H values a frame; the weighted sum n H, so its choice of
range is also a choice of disk.

Each state enters the weighted sum standardised per dimension with the training split's
frame mean and std (fixed buffers, like the recognizer's own input normalisation), so the
softmax weighs the states by what they say rather than by their scale, which grows along
the stack of a post-LN transformer by orders of magnitude in some checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cpc_fast.models.recognizer import EmotionRecognizer

MODES = ("layer", "mean", "weighted")
_SPEC = re.compile(
    r"^(?:(?P<layer>\d+)|(?P<mode>mean|weighted)(?::(?P<first>\d+)-(?P<last>\d+))?)$"
)


@dataclass(frozen=True)
class LayerChoice:
    """Hidden states ``first..last`` (inclusive; None: through the last one) and how they
    become features: ``mode`` is one of ``layer`` (first == last), ``mean``, ``weighted``."""

    mode: str
    first: int = 0
    last: int | None = None

    @classmethod
    def parse(cls, spec: str) -> LayerChoice:
        """``K``, ``mean``, ``weighted``, ``mean:A-B`` or ``weighted:A-B``; ValueError else."""
        match = _SPEC.match(spec.strip())
        if match is None:
            raise ValueError(
                f"must be a hidden state number K, mean, weighted, mean:A-B or weighted:A-B, "
                f"got {spec!r}"
            )
        if match["layer"] is not None:
            layer = int(match["layer"])
            return cls("layer", layer, layer)
        if match["first"] is None:
            return cls(match["mode"])
        first, last = int(match["first"]), int(match["last"])
        if last < first:
            raise ValueError(f"takes a range A-B with A <= B, got {spec!r}")
        return cls(match["mode"], first, last)

    @property
    def spec(self) -> str:
        """The text :meth:`parse` reads back."""
        if self.mode == "layer":
            return str(self.first)
        if self.first == 0 and self.last is None:
            return self.mode
        return f"{self.mode}:{self.first}-{self.last}"

    def states(self, num_states: int) -> range:
        """The hidden-state indices used, of a model with ``num_states`` (L + 1)."""
        problem = self.problem(num_states)
        if problem:
            raise ValueError(problem)
        return range(self.first, (num_states - 1 if self.last is None else self.last) + 1)

    def problem(self, num_states: int) -> str | None:
        """What is wrong with this choice for a model of ``num_states`` hidden states."""
        last = num_states - 1 if self.last is None else self.last
        if last >= num_states:
            return (
                f"asks for hidden state {last}, but the model has {num_states} (0-{num_states - 1})"
            )
        return None

    def stored_states(self, num_states: int) -> int:
        """How many hidden states one frame of the feature cache holds (1, or n for the
        weighted sum)."""
        return len(self.states(num_states)) if self.mode == "weighted" else 1

    def select(
        self, hidden_states: Sequence[torch.Tensor], num_states: int | None = None
    ) -> torch.Tensor:
        """The features from a model's hidden states, each (B, L, H): (B, L, H), or
        (B, L, n H) for ``weighted`` (states concatenated in order). ``num_states``: the
        model's (default: ``len(hidden_states)``; fewer are given when the layers past the
        last one chosen were not run). The mean is taken in float32."""
        chosen = [hidden_states[i] for i in self.states(num_states or len(hidden_states))]
        if self.mode == "layer":
            return chosen[0]
        if self.mode == "mean":
            return torch.stack([h.float() for h in chosen]).mean(0)
        return torch.cat(chosen, dim=-1)

    def describe(self, num_states: int | None = None) -> str:
        """A phrase for tables: "layer 6", "mean of layers 0-12", "weighted sum of 0-12"."""
        if self.mode == "layer":
            return f"layer {self.first}"
        last = self.last if self.last is not None else (num_states - 1 if num_states else None)
        span = "all layers" if last is None else f"layers {self.first}-{last}"
        return f"{'mean of' if self.mode == 'mean' else 'weighted sum of'} {span}"


class WeightedLayerSum(nn.Module):
    """(B, L, n H) stacked hidden states -> (B, L, H): each state standardised with fixed
    per-dimension statistics, then summed with softmax-normalised learned weights (zeros at
    the start: the plain mean)."""

    def __init__(self, num_states: int, dim: int) -> None:
        super().__init__()
        self.num_states = num_states
        self.dim = dim
        self.weights = nn.Parameter(torch.zeros(num_states))
        self.register_buffer("state_mean", torch.zeros(num_states, dim))
        self.register_buffer("state_std", torch.ones(num_states, dim))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-state, per-dimension statistics, each (n, H) (or (n H,))."""
        std = std.reshape(self.num_states, self.dim)
        if std.le(0).any():
            raise ValueError("state_std must be positive")
        self.state_mean.copy_(mean.reshape(self.num_states, self.dim))
        self.state_std.copy_(std)

    def softmax_weights(self) -> torch.Tensor:
        """(n,) the weight of each state in the sum."""
        return torch.softmax(self.weights, dim=0)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        B, L, width = stacked.shape
        if width != self.num_states * self.dim:
            raise ValueError(
                f"expected (B, L, {self.num_states} x {self.dim}) stacked states, got "
                f"{tuple(stacked.shape)}"
            )
        states = stacked.view(B, L, self.num_states, self.dim)
        states = (states - self.state_mean) / self.state_std  # (B, L, n, H)
        return torch.einsum("blnh,n->blh", states, self.softmax_weights())


class LayerSumRecognizer(nn.Module):
    """The recognizer behind a :class:`WeightedLayerSum`: the same calls as
    :class:`~cpc_fast.models.recognizer.EmotionRecognizer`, on (B, L, n H) stacked states."""

    def __init__(self, layer_sum: WeightedLayerSum, recognizer: EmotionRecognizer) -> None:
        super().__init__()
        self.layer_sum = layer_sum
        self.recognizer = recognizer

    @property
    def config(self):
        return self.recognizer.config

    def embed(self, stacked: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, n H), (B,) -> the pooled utterance representation (B, 2 H)."""
        return self.recognizer.embed(self.layer_sum(stacked), lengths)

    def forward(
        self, stacked: torch.Tensor, lengths: torch.Tensor, check: bool = True
    ) -> torch.Tensor:
        return self.recognizer(self.layer_sum(stacked), lengths, check=check)  # (B, 3)


__all__ = ["MODES", "LayerChoice", "LayerSumRecognizer", "WeightedLayerSum"]
