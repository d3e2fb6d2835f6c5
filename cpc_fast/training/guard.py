"""Stopping a run that diverges: NaN or infinite losses and gradients, found without making a
step wait for the GPU.

Each step the loop shows the guard its loss and the model's gradients, after the backward
pass and before the optimizer step (:meth:`NonFiniteGuard.observe`). By default the guard
only updates, on the device, the number of the first step whose loss or gradient was not
finite; the loop asks for it (:meth:`NonFiniteGuard.check`, one small transfer) where it
synchronises anyway, when it logs or validates, and always before it writes a checkpoint.
So no step waits for the GPU, the error names the first bad step and the quantity, and no
checkpoint is written after it: the last good one is kept.

With a budget (``skip`` > 0, as large-scale trainers allow) every step is checked at once,
at the cost of one host synchronisation per step: a step whose loss or gradient is not
finite is not applied (the optimizer does not step), up to ``skip`` steps in all; the next
one stops the run as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from cpc_fast.errors import TrainingDiverged
from cpc_fast.training.distributed import DistEnv

_NONE = torch.iinfo(torch.int64).max  # "no bad step yet"
QUANTITIES = ("loss", "gradient")


class NonFiniteGuard:
    """Watches the steps of one training loop (module docstring).

    Args:
        env: this process's place in the job (the flags are combined over ranks).
        step: the number of the last step already taken; observed steps count on from it.
        skip: how many non-finite steps may be skipped in all (0: stop at the first).
        skipped: how many were skipped before (a resumed run).
        name: a step number -> how the error and warnings name it ("step 12").
        hint: what the error adds (which checkpoint is kept, what to change), asked when
            it is raised.
        warn: hears each skipped step (one line).
    """

    def __init__(
        self,
        env: DistEnv,
        step: int = 0,
        *,
        skip: int = 0,
        skipped: int = 0,
        name: Callable[[int], str] = lambda step: f"step {step}",
        hint: Callable[[], str] = lambda: "",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.env, self.skip, self.skipped = env, skip, skipped
        self.name, self.hint, self.warn = name, hint, warn
        self.last_skipped = False
        self._host_step = step
        self._step = torch.tensor(step, dtype=torch.int64, device=env.device)
        self._first = torch.full((len(QUANTITIES),), _NONE, dtype=torch.int64, device=env.device)

    def observe(self, loss: torch.Tensor | None, parameters: Iterable[torch.Tensor]) -> bool:
        """Records one step: its loss (None when it does not count, e.g. an all-padding
        batch) and the gradients of ``parameters``. Returns whether the optimizer may step:
        always True without a budget (nothing is synchronised)."""
        self._host_step += 1
        self._step += 1
        bad = self._bad(loss, [p.grad for p in parameters if p.grad is not None])
        if not self.skip:
            self._first = torch.where(bad & (self._first == _NONE), self._step, self._first)
            return True
        counts = bad.to(torch.int64)
        if self.env.distributed:  # every rank must take the same decision
            dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        flags = [bool(v) for v in counts.tolist()]
        self.last_skipped = any(flags)
        if not self.last_skipped:
            return True
        what = QUANTITIES[flags.index(True)]
        if self.skipped >= self.skip:
            raise TrainingDiverged(self._message(self._host_step, what, budget_spent=True))
        self.skipped += 1
        if self.warn is not None:
            self.warn(
                f"{self.name(self._host_step)}: the {what} is NaN or infinite; its update is "
                f"skipped ({self.skipped} of {self.skip} allowed)"
            )
        return False

    def check(self) -> None:
        """Raises :class:`TrainingDiverged` naming the first non-finite step seen, if any
        (a collective under DDP: call it at the same point on every rank)."""
        first = self._first.clone()
        if self.env.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        steps = first.tolist()
        step = min(steps)
        if step == _NONE:
            return
        raise TrainingDiverged(self._message(step, QUANTITIES[steps.index(step)]))

    def _bad(self, loss: torch.Tensor | None, grads: list[torch.Tensor]) -> torch.Tensor:
        """[loss not finite, some gradient not finite] (2,) bool, on the device."""
        device = self._step.device
        bad_loss = (
            torch.zeros((), dtype=torch.bool, device=device)
            if loss is None
            else ~torch.isfinite(loss.detach()).all()
        )
        bad_grad = torch.zeros((), dtype=torch.bool, device=device)
        if grads:  # the largest |g|: finite exactly when every gradient is
            bad_grad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, math.inf))
        return torch.stack([bad_loss, bad_grad.to(device)])

    def _message(self, step: int, what: str, budget_spent: bool = False) -> str:
        spent = f" after {self.skipped} skipped step(s)" if budget_spent else ""
        return (
            f"training diverged at {self.name(step)}: the {what} is NaN or infinite{spent}"
            + self.hint()
        )


__all__ = ["QUANTITIES", "NonFiniteGuard"]
