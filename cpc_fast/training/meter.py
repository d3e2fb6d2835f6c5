"""Train metrics of a log interval, summed on the device, and its throughput clock.

The sums are [loss, loss_k (K), accuracy_k (K), rows] (2K + 2,) float64, added on the
device so that no step waits for the GPU; :func:`step_metrics` turns them into the logged
means. Validation sums the same way (:mod:`cpc_fast.training.validate`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

from cpc_fast.losses.cpc import CPCInfoNCEOutput
from cpc_fast.training.distributed import DistEnv


def metric_sums(out: CPCInfoNCEOutput, rows: float = 1.0) -> torch.Tensor:
    """[loss, loss_k (K), accuracy_k (K), rows] (2K + 2,) float64, each term weighted by
    ``rows``: what :func:`step_metrics` averages, summed on the device (no sync)."""
    weight = torch.full((1,), float(rows), device=out.loss.device)
    parts = [out.loss.reshape(1) * rows, out.loss_per_step * rows, out.accuracy_per_step * rows]
    return torch.cat([*parts, weight]).double()


def step_metrics(sums: torch.Tensor, K: int) -> dict[str, float]:
    """Sums [loss, loss_k (K), accuracy_k (K), count] (2K + 2,) -> the means that are logged."""
    values = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    metrics = {"loss": values[0], "accuracy": float(np.mean(values[K + 1 :]))}
    for k in range(K):
        metrics[f"loss_step_{k + 1}"] = values[1 + k]
        metrics[f"accuracy_step_{k + 1}"] = values[K + 1 + k]
    return metrics


class TrainMeter:
    """The steps of one log interval: their metric sums and the audio they trained on, and
    the time spent in them (waiting for data included; the clock is restarted after the
    logging, validation and checkpoints that follow a step, so those do not count)."""

    def __init__(self, K: int, env: DistEnv) -> None:
        self.K, self.env = K, env
        self.sums = torch.zeros(2 * K + 2, dtype=torch.float64, device=env.device)
        self.audio = self.seconds = 0.0
        self.since = time.perf_counter()

    def add(self, out: CPCInfoNCEOutput, audio_seconds: float) -> None:
        self.sums += metric_sums(out)
        self.audio += audio_seconds

    def lap(self) -> float:
        """Seconds since the clock was restarted, counted in the interval."""
        elapsed = time.perf_counter() - self.since
        self.seconds += elapsed
        return elapsed

    def restart(self) -> None:
        self.since = time.perf_counter()

    def row(self) -> dict[str, float]:
        """The interval's means over all ranks (a collective under DDP) and its audio seconds
        per second; starts the next interval."""
        if self.env.distributed:
            dist.all_reduce(self.sums)
        row = step_metrics(self.sums, self.K)
        row["audio_seconds_per_second"] = self.audio / max(self.seconds, 1e-9)
        self.sums.zero_()
        self.audio = self.seconds = 0.0
        return row


__all__ = ["TrainMeter", "metric_sums", "step_metrics"]
