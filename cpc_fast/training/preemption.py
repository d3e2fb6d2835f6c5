"""Preemption: a signal that asks a run to stop (SLURM before a time limit or a preemption,
Kubernetes, a user), and how every rank agrees on the step to stop after.

    restore = install()               # the CLI does this; the signals: module docstring below
    with deferred():                  # a training loop: signals only ask ...
        for batch in batches:
            train(batch)
            if vote.poll():           # ... and the ranks agree when to act (StopVote)
                save(); raise Preempted(requested(), "step 12 is saved in runs/x")

Which signals: ``CPC_FAST_PREEMPT_SIGNALS``, a comma list of names (default
``SIGTERM,SIGUSR1,SIGUSR2``: SIGTERM from schedulers and ``kill``, SIGUSR1 or SIGUSR2 from
SLURM's ``--signal``; ``--launcher slurm`` uses submitit's SIGUSR2). Ctrl-C (SIGINT) keeps
its own meaning: stop at once.

What a signal does: inside :func:`deferred` it only records the request, and the code polls
it at safe points (the pre-training loop after each step, the recognizer's training before
each batch); elsewhere (indexing, caching features, waiting for a task) it raises
:class:`Preempted` where the program is, as Ctrl-C does, so that ``finally`` blocks and
claims clean up. Either way the request stays recorded, and later signals change nothing:
the stop is under way, and a launcher forwarding the same signal to its workers must not
cut short the checkpoint they are writing.

The process exits with :data:`PREEMPTED_EXIT_STATUS` (75, ``EX_TEMPFAIL`` of sysexits.h:
"temporary failure, try again"): the work is saved, run the same command again to resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from cpc_fast.errors import UserInputError

if TYPE_CHECKING:
    from cpc_fast.training.distributed import DistEnv

PREEMPTED_EXIT_STATUS = 75
SIGNALS_VARIABLE = "CPC_FAST_PREEMPT_SIGNALS"
DEFAULT_SIGNALS = "SIGTERM,SIGUSR1,SIGUSR2"


class Preempted(BaseException):
    """The run stopped on a preemption signal, its work saved (a BaseException, as
    KeyboardInterrupt: no ``except Exception`` takes it for a failure).

    Args:
        signum: the signal this process received; None when another rank's (or a worker's)
            signal stopped it.
        saved: what was saved, for the message ("step 120 is saved in runs/x"); None when
            the run stopped outside a training loop (its last checkpoint is what stays).
    """

    def __init__(self, signum: int | None = None, saved: str | None = None) -> None:
        super().__init__(signum, saved)
        self.signum = signum
        self.saved = saved

    def describe(self) -> str:
        """One line: which signal, what is saved, what to do."""
        which = f" ({signal.Signals(self.signum).name})" if self.signum else ""
        saved = f": {self.saved}" if self.saved else ""
        return f"preempted{which}{saved}; run the same command again to resume"


class _State:
    requested: int | None = None  # the first preemption signal received
    depth = 0  # > 0 inside deferred(): signals only ask


_state = _State()


def preemption_signals() -> tuple[signal.Signals, ...]:
    """The signals that preempt (``CPC_FAST_PREEMPT_SIGNALS``, module docstring)."""
    names = os.environ.get(SIGNALS_VARIABLE, DEFAULT_SIGNALS)
    found = []
    for name in (n.strip().upper() for n in names.split(",") if n.strip()):
        full = name if name.startswith("SIG") else f"SIG{name}"
        if full in ("SIGINT", "SIGKILL", "SIGSTOP") or not hasattr(signal, full):
            raise UserInputError(
                f"{SIGNALS_VARIABLE}={names!r}: {name} is not a signal that can preempt "
                f"(e.g. {DEFAULT_SIGNALS})"
            )
        found.append(signal.Signals[full])
    return tuple(dict.fromkeys(found))


def _on_signal(signum: int, frame: object) -> None:
    if _state.requested is not None:
        return  # the stop is under way: a repeated or forwarded signal changes nothing
    _state.requested = signum
    if _state.depth == 0:
        raise Preempted(signum)


def install(signals: tuple[signal.Signals, ...] | None = None) -> Callable[[], None]:
    """Makes ``signals`` (default: :func:`preemption_signals`) preempt this process, with no
    request recorded yet; returns what puts the previous handlers back and forgets the
    request. Off the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    chosen = preemption_signals() if signals is None else signals
    _state.requested, _state.depth = None, 0
    previous = {s: signal.signal(s, _on_signal) for s in chosen}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.requested = None

    return restore


def requested() -> int | None:
    """The preemption signal this process received, if any."""
    return _state.requested


def stop_agreed(env: DistEnv) -> bool:
    """Whether any rank of ``env`` received a preemption signal: a blocking all-reduce under
    DDP, for the rare points between tasks (every rank must ask at the same point)."""
    flag = int(_state.requested is not None)
    if not env.distributed:
        return bool(flag)
    votes = torch.tensor([flag], dtype=torch.int32, device=env.device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside, a preemption signal is only recorded; the code polls :func:`requested` (or a
    :class:`StopVote`) where it can stop cleanly."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1


def ignore_in_helpers(worker_id: int = 0) -> None:
    """A DataLoader's ``worker_init_fn``: its worker processes ignore the preemption signals,
    which a scheduler sends to every process of a job, so that a loader's worker does not die
    under the step the main process is finishing (the main process stops them)."""
    for s in preemption_signals():
        signal.signal(s, signal.SIG_IGN)


class StopVote:
    """Whether every rank stops after this step, with no extra synchronisation on the device.

    One process: the request itself. Several: each rank's request (0/1) is all-reduced (MAX)
    asynchronously on a gloo group of its own, on the CPU, and read one poll later, when it
    is long done; every rank reads the same value after the same step, so all stop together,
    one step after the first rank that was signalled. No device sync, no blocking: the cost
    is one small CPU message per step, in gloo's own thread. (Riding on the gradients'
    all-reduce would need a comm hook per model type; checking only when the loop logs would
    leave up to ``log_every`` steps between the signal and the stop.)

    Every rank must create it and call :meth:`poll` at the same points; :meth:`close` after
    the last poll of a loop that ended normally.
    """

    def __init__(self, env: DistEnv) -> None:
        self.distributed = env.distributed
        self.group = dist.new_group(backend="gloo") if self.distributed else None
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def poll(self) -> bool:
        """True when the ranks are to stop now (the same answer on every rank)."""
        if not self.distributed:
            return _state.requested is not None
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            self.pending = None
            if flag.item():
                return True
        flag = torch.tensor([int(_state.requested is not None)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self.pending = (work, flag)
        return False

    def close(self) -> None:
        """Waits for the vote still in flight (every rank has sent it) and frees the group."""
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None


__all__ = [
    "DEFAULT_SIGNALS",
    "PREEMPTED_EXIT_STATUS",
    "SIGNALS_VARIABLE",
    "Preempted",
    "StopVote",
    "deferred",
    "ignore_in_helpers",
    "install",
    "preemption_signals",
    "requested",
    "stop_agreed",
]
