"""Process launching and process-group setup shared by every training command.

* Under an existing launcher (``LOCAL_RANK`` in the environment, e.g. ``torchrun`` or
  SLURM + torchrun), :func:`init` joins the group it was given. So
  ``torchrun --nnodes 2 --nproc-per-node 8 -m cpc_fast pretrain ...`` works across nodes.
* :func:`launch` re-runs a command line as N local processes through torchrun's launcher,
  in this process, with a standalone rendezvous on a free port (``--gpus N``, see
  :mod:`cpc_fast.cli.launch`), or as this node's share of a multi-node group through a c10d
  rendezvous (a SLURM job, :mod:`cpc_fast.cli.slurm_jobs`). The launcher forwards the
  preemption signals to its workers and waits for them to save
  (:mod:`cpc_fast.training.preemption`).
* ``gpus=0``, or no CUDA device, runs on the CPU; several CPU processes use gloo
  (``--cpu-processes N`` asks for them).
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from cpc_fast.errors import UserInputError
from cpc_fast.io.cpus import share_of_cores
from cpc_fast.training.preemption import PREEMPTED_EXIT_STATUS, Preempted, preemption_signals

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_launcher() -> bool:
    """True inside a process started by torchrun (or anything that sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


class WorkerFailed(RuntimeError):
    """A launched worker exited with an error; each worker prints its own message."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# How long the launcher waits for its workers to finish their step and save after it
# forwarded them a signal, before it kills them (torch >= 2.12; before, torch's 30 s).
SHUTDOWN_TIMEOUT_S = 120
# The signals torch's launcher forwards to its workers by default, kept.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def launch(
    num_processes: int,
    argv: list[str],
    *,
    nodes: int = 1,
    endpoint: str | None = None,
    run_id: str = "none",
    keep_signals: Collection[int] = (),
) -> None:
    """Runs ``python -m cpc_fast <argv>`` as ``num_processes`` workers here (torchrun).

    Alone (no ``endpoint``): a standalone rendezvous on a free port. With
    ``endpoint`` (``host:port`` of the first node): this node's share of ``nodes`` nodes
    joining the c10d rendezvous ``run_id`` there, as ``torchrun --rdzv-backend c10d``.

    The launcher forwards the preemption signals (and torchrun's usual ones) to the workers,
    except ``keep_signals``, whose handlers in this process stay as they are. Blocks until
    every worker exits; raises :class:`WorkerFailed` naming the failed ranks, or
    :class:`~cpc_fast.training.preemption.Preempted` when a preemption signal stopped them
    (the launcher's, or every failed worker exited with the preempted status).
    """
    if num_processes < 1:
        raise ValueError(f"launch() needs at least one process, got {num_processes}")
    preempting = preemption_signals()
    if endpoint is None:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}",
            "--max-restarts=0",
        ]
    forwarded = [s for s in dict.fromkeys((*_FORWARDED, *preempting)) if s not in keep_signals]
    parser = get_args_parser()
    known = vars(parser.parse_args(["--standalone", "-"]))  # what this torch's torchrun offers
    if "signals_to_handle" in known:  # torch >= 2.9
        where.append(f"--signals-to-handle={','.join(signal.Signals(s).name for s in forwarded)}")
    if "shutdown_timeout" in known and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:
        where.append(f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}")
    args = parser.parse_args(
        [*where, f"--nproc-per-node={num_processes}", "--module", "cpc_fast", *argv]
    )
    # Each process's share of the cores, not torchrun's default of one thread (which leaves
    # all but N cores idle); a value the user set is kept.
    os.environ.setdefault("OMP_NUM_THREADS", str(share_of_cores(num_processes)))
    try:
        run(args)
    except ChildFailedError as exc:  # its message is a long per-rank report: summarise it
        ranks = sorted(exc.failures)
        codes = [exc.failures[r].exitcode for r in ranks]
        if all(c == PREEMPTED_EXIT_STATUS for c in codes):
            raise Preempted() from None  # each worker has said what it saved
        code = codes[0]
        raise WorkerFailed(
            f"worker process(es) {', '.join(map(str, ranks))} of {num_processes} failed "
            f"(exit status {code}); their messages are above",
            code if isinstance(code, int) and code > 0 else 1,
        ) from None
    except SignalException as exc:  # forwarded to the workers, which have stopped
        if exc.sigval in preempting:
            raise Preempted(exc.sigval) from None
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise WorkerFailed(f"launching {num_processes} processes stopped: {exc}") from None
    except Exception as exc:  # the rendezvous
        first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise WorkerFailed(f"launching {num_processes} processes failed: {first[0]}") from exc


def init(gpus: int, timeout_minutes: float = 30.0) -> DistEnv:
    """Joins (or skips) the process group and picks this process's device.

    ``gpus == 0`` forces the CPU. With CUDA the backend is NCCL, otherwise gloo.
    """
    use_cuda = gpus > 0 and torch.cuda.is_available()
    if not under_launcher():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if use_cuda else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_ddp(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel over ``model`` when the job has several processes."""
    if not env.distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Sends a picklable object from ``src`` to every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_to_main(env: DistEnv, obj: T) -> list[T] | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks)."""
    if not env.distributed:
        return [obj]
    gathered: list[T] | None = [None] * env.world_size if env.is_main else None  # type: ignore[list-item]
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def on_main_then_broadcast(env: DistEnv, compute: Callable[[], T]) -> T:
    """Runs ``compute`` on rank 0 alone and returns its result on every rank.

    A :class:`UserInputError` or ``OSError`` it raises is raised on every rank, so all of
    them stop with the same message instead of waiting on rank 0.
    """
    outcome: object = None
    if env.is_main:
        try:
            outcome = compute()
        except (UserInputError, OSError) as exc:
            outcome = exc
    outcome = broadcast_object(outcome)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
