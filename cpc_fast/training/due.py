"""When the pre-training loop logs, validates and saves: the one place that decides.

:class:`Every` is the rule of each: every N steps, or with N = 0 at each epoch boundary (and
the run's end). :class:`StepSchedule` combines the run's three periods into what is due
after a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Every:
    """Due every ``steps`` steps; with ``steps == 0``, due at each epoch boundary instead."""

    steps: int

    def due(self, step: int, boundary: bool) -> bool:
        return step % self.steps == 0 if self.steps else boundary


class Due(NamedTuple):
    """What is due after a step."""

    log: bool
    validate: bool
    save: bool

    @property
    def anything(self) -> bool:
        return self.log or self.validate or self.save


class StepSchedule:
    """Train metrics every ``log_every`` steps; validation (when there is a validation set)
    and the checkpoint every ``valid_every`` / ``save_every`` steps or, for 0, at each
    epoch's end; all three after the last step."""

    def __init__(
        self, log_every: int, valid_every: int, save_every: int, validates: bool = True
    ) -> None:
        self.log, self.validate, self.save = Every(log_every), Every(valid_every), Every(save_every)
        self.validates = validates

    def after(self, step: int, epoch_done: bool, last: bool) -> Due:
        boundary = epoch_done or last
        return Due(
            log=self.log.due(step, False) or last,
            validate=self.validates and self.validate.due(step, boundary),
            save=self.save.due(step, boundary),
        )


__all__ = ["Due", "Every", "StepSchedule"]
