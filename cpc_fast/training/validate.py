"""When to validate, log and save, and the CPC validation pass.

:class:`Every` is the one schedule rule of every training loop here: every N steps, or with
N = 0 at each epoch boundary (and the end). :class:`CPCValidator` scores a CPC model on a
held-out set with fixed negatives, so validations at different steps are comparable.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.data.samplers import ShardSampler
from cpc_fast.data.windows import WindowDataset
from cpc_fast.losses.info_nce import CPCInfoNCEOutput, cpc_info_nce
from cpc_fast.models.loading import unwrap
from cpc_fast.training.data import window_loader
from cpc_fast.training.distributed import DistEnv
from cpc_fast.training.seeds import derive_seed


@dataclass(frozen=True)
class Every:
    """Due every ``steps`` steps; with ``steps == 0``, due at each epoch boundary instead."""

    steps: int

    def due(self, step: int, boundary: bool) -> bool:
        return step % self.steps == 0 if self.steps else boundary


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device`` when it is set, else no autocast."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


class CPCValidator:
    """The InfoNCE loss and accuracies of a CPC model on the validation ``windows``, every
    rank scoring its own shard; ``take(batch)`` (see ``__call__``) puts each batch on the
    device and accounts for its unreadable items."""

    def __init__(
        self,
        config: PretrainConfig,
        env: DistEnv,
        amp_dtype: torch.dtype | None,
        windows: WindowDataset,
    ) -> None:
        self.config, self.env, self.amp_dtype = config, env, amp_dtype
        self.windows = windows
        self.sampler = ShardSampler(
            len(windows), config.batch_size, world_size=env.world_size, rank=env.rank
        )

    @torch.no_grad()
    def __call__(self, model: nn.Module, take) -> dict[str, float]:
        cfg, env = self.config, self.env
        net = unwrap(model)
        net.eval()
        K = cfg.model.prediction_steps
        sums = torch.zeros(2 * K + 2, dtype=torch.float64, device=env.device)
        for j, batch in enumerate(window_loader(self.windows, self.sampler, cfg, env)):
            wave, weight = take(batch)
            if weight == 0.0:
                continue
            with autocast(env.device, self.amp_dtype):
                out = net(wave)
            # Fixed negatives per batch: validations at different steps are comparable.
            res = cpc_info_nce(
                out.predictions,
                out.z,
                num_negatives=cfg.model.num_negatives,
                temperature=cfg.model.temperature,
                seed=derive_seed(cfg.seed, "valid", j * env.world_size + env.rank),
                exclude_positive=cfg.model.exclude_positive,
            )
            sums += metric_sums(res, wave.shape[0])
        if env.distributed:
            dist.all_reduce(sums)
        net.train()
        return step_metrics(sums, K)


__all__ = ["CPCValidator", "Every", "autocast", "metric_sums", "step_metrics"]
