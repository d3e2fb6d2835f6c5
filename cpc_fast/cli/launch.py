"""``--gpus N`` and ``--cpu-processes N``: how a command becomes N processes (the same rule
for every command).

* Under an existing launcher (``LOCAL_RANK`` in the environment, e.g. torchrun or SLURM +
  torchrun) the process joins the group it was given and never relaunches.
* ``--gpus N`` with N > 1 re-runs the same command line as N local processes, one GPU each
  (:func:`cpc_fast.training.distributed.launch`), then returns. N may not exceed the GPUs
  visible here: without CUDA, ``--gpus 2`` and more are refused at once.
* ``--gpus 0``, or ``--gpus 1`` without CUDA, runs one process on the CPU.
* ``--cpu-processes N`` runs N CPU processes (gloo) on purpose, whatever GPUs there are: for
  tests, and for CPU machines. N may not exceed the CPU cores this process may use
  (:func:`~cpc_fast.io.cpus.available_cpus`: its affinity and cgroup quota).
* ``--launcher slurm`` (:mod:`cpc_fast.cli.slurm`): the counts are per node of the job,
  checked there, not against this machine.

``cpu_processes`` None or 0 means none was asked for.
"""

from __future__ import annotations

import torch

from cpc_fast.cli.app import invoked_argv
from cpc_fast.errors import UserInputError
from cpc_fast.io.cpus import available_cpus
from cpc_fast.training import distributed


def device_gpus(gpus: int, cpu_processes: int | None = None) -> int:
    """What :func:`cpc_fast.training.distributed.init` gets: 0 (the CPU) for CPU processes."""
    return 0 if cpu_processes else gpus


def check_counts(gpus: int, cpu_processes: int | None = None) -> None:
    """Refuses a negative count, or both kinds of process at once (wherever they run)."""
    cpu_processes = cpu_processes or 0
    if gpus < 0:
        raise UserInputError(f"--gpus must be 0 or more, got {gpus}")
    if cpu_processes < 0:
        raise UserInputError(f"--cpu-processes must be 0 or more, got {cpu_processes}")
    if cpu_processes and gpus > 1:
        raise UserInputError("give --gpus N or --cpu-processes N, not both")


def needs_launch(gpus: int, cpu_processes: int | None = None) -> bool:
    """True when this call must spawn workers instead of training in-process.

    Refuses, before any work, a ``--gpus`` that is negative or larger than the GPUs visible
    here (more local processes than devices would share them silently, or on a CPU start a
    crowd of gloo workers), and more ``--cpu-processes`` than CPU cores. Under a launcher the
    launcher decides.
    """
    check_counts(gpus, cpu_processes)
    if distributed.under_launcher():
        return False
    if cpu_processes:
        cores = available_cpus()
        if cpu_processes > cores:
            raise UserInputError(
                f"--cpu-processes {cpu_processes} asks for more processes than the {cores} "
                "CPU cores here"
            )
        return cpu_processes > 1
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > max(visible, 1):
        if visible:
            raise UserInputError(
                f"--gpus {gpus} asks for more GPUs than the {visible} visible here"
            )
        raise UserInputError(
            f"--gpus {gpus}: no CUDA GPU is visible here; use --gpus 0 for the CPU, or "
            f"--cpu-processes {gpus} to run {gpus} CPU processes (gloo)"
        )
    return gpus > 1


def relaunched(gpus: int, cpu_processes: int | None = None) -> bool:
    """Outside a launcher, with N > 1 processes asked for, re-runs this command as N
    processes (blocking) and returns True; otherwise returns False and this process does
    the work."""
    if not needs_launch(gpus, cpu_processes):
        return False
    argv = invoked_argv()
    if not argv:
        raise UserInputError("--gpus N > 1 relaunches the command line: run it as cpc-fast")
    distributed.launch(cpu_processes or gpus, argv)
    return True


__all__ = ["check_counts", "device_gpus", "needs_launch", "relaunched"]
