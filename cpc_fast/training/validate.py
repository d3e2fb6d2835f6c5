"""The CPC validation pass: :class:`CPCValidator` scores a CPC model on a held-out set with
fixed negatives, so validations at different steps are comparable. When it runs is
:mod:`cpc_fast.training.due`'s decision."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from cpc_fast.config.pretrain import PretrainConfig
from cpc_fast.data.samplers import ShardSampler
from cpc_fast.data.windows import WindowDataset
from cpc_fast.models.loading import unwrap
from cpc_fast.training.data import window_loader
from cpc_fast.training.distributed import DistEnv
from cpc_fast.training.meter import metric_sums, step_metrics
from cpc_fast.training.precision import autocast
from cpc_fast.training.seeds import derive_seed


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
            seed = derive_seed(cfg.seed, "valid", j * env.world_size + env.rank)
            res = cfg.loss.cpc(out.predictions, out.z, seed=seed)
            sums += metric_sums(res, wave.shape[0])
        if env.distributed:
            dist.all_reduce(sums)
        net.train()
        return step_metrics(sums, K)


__all__ = ["CPCValidator"]
