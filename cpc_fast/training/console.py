"""What a training run prints: info lines on rank 0, warnings on every rank, a progress bar."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

from cpc_fast.training.distributed import DistEnv

logger = logging.getLogger("cpc_fast.training")


class Console:
    """Info lines on rank 0 when ``progress``; warnings always (rank-prefixed under DDP);
    printed above the progress bar while there is one."""

    def __init__(self, env: DistEnv, progress: bool) -> None:
        self.env = env
        self.verbose = env.is_main and progress
        self.bar: tqdm | None = None

    def info(self, message: str) -> None:
        if self.verbose:
            self._write(message, sys.stdout)

    def warn(self, message: str) -> None:
        if self.env.distributed:
            message = f"[rank {self.env.rank}] {message}"
        if self.verbose or (self.env.distributed and not self.env.is_main):
            self._write(f"warning: {message}", sys.stderr)
        else:
            logger.warning(message)

    def progress_bar(self, total: int, initial: int) -> tqdm:
        bar = tqdm(
            total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not self.verbose
        )
        self.bar = bar if self.verbose else None
        return bar

    def _write(self, message: str, stream) -> None:
        if self.bar is not None:
            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)


__all__ = ["Console"]
