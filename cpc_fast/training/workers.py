"""Independent local worker processes (task parallel), as opposed to a DDP group.

    codes = run_workers(target, [(config, 0), (config, 1)])   # blocks; one exit status each

Each worker is a fresh interpreter (``multiprocessing``'s spawn: no CUDA or OpenMP state
copied from the parent) calling ``target(*args)``; the workers share no process group, so
none of them holds a collective or a rendezvous thread when it exits. A worker's
:class:`~cpc_fast.errors.UserInputError` or ``OSError`` is printed as one ``error:`` line
naming the worker and ends it with status 2; anything else keeps its traceback (status 1).
A worker handles the preemption signals as the command does
(:mod:`cpc_fast.training.preemption`: its clean-ups run, its claim is released) and ends with
status 75. If the parent is interrupted (Ctrl-C, a preemption signal) it passes the stop on
to its workers (SIGTERM) before it returns; if it is killed (SIGKILL), Linux kills them too
(``PR_SET_PDEATHSIG``), so no orphan keeps a claim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cpc_fast.errors import UserInputError
from cpc_fast.training import preemption

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the parent dies (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _worker_main(
    target: Callable[..., Any], index: int, count: int, args: tuple, parent: int
) -> None:
    _die_with_parent(parent)
    try:
        preemption.install()
        target(*args)
    except (UserInputError, OSError) as exc:
        print(f"error: worker {index + 1} of {count}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except preemption.Preempted:
        raise SystemExit(preemption.PREEMPTED_EXIT_STATUS) from None


def gpu_of_worker(slot: int, workers_per_gpu: int, visible: int) -> int:
    """The GPU of worker ``slot`` (0-based) when ``workers_per_gpu`` workers share each of
    the ``visible`` GPUs: workers 0..K-1 on GPU 0, K..2K-1 on GPU 1, and so on (wrapping
    around when there are more workers than places)."""
    if workers_per_gpu < 1 or visible < 1 or slot < 0:
        raise ValueError(
            f"slot {slot}, workers_per_gpu {workers_per_gpu}, visible {visible}: "
            "need slot >= 0 and at least one worker per GPU and one GPU"
        )
    return slot // workers_per_gpu % visible


def run_workers(
    target: Callable[..., Any],
    args: Sequence[tuple],
    *,
    on_wait: Callable[[], None] | None = None,
    every: float = 1.0,
) -> list[int]:
    """Runs ``target(*args[i])`` in ``len(args)`` processes at once; returns their exit
    statuses in order (a negative status: killed by that signal). ``on_wait`` is called
    every ``every`` seconds while they run (a progress display), and once at the end."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_main,
            args=(target, i, len(args), a, os.getpid()),
            name=f"cpc-fast worker {i + 1}",
        )
        for i, a in enumerate(args)
    ]
    try:
        for process in processes:
            process.start()
        running = list(processes)
        while running:
            # Reaped as each one ends, in any order: an exited worker left unreaped is a
            # zombie, whose pid still answers signals.
            timeout = every if on_wait is not None else None
            ended = multiprocessing.connection.wait([p.sentinel for p in running], timeout)
            for process in [p for p in running if p.sentinel in ended]:
                process.join()
                running.remove(process)
            if on_wait is not None:
                on_wait()
    except BaseException:  # Ctrl-C or preempted in the parent: no orphan keeps training
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
        raise
    return [int(p.exitcode if p.exitcode is not None else 1) for p in processes]


__all__ = ["gpu_of_worker", "run_workers"]
