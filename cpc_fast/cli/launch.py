"""``--gpus N``: how a command becomes N processes (the same rule for every command).

* Under an existing launcher (``LOCAL_RANK`` in the environment, e.g. torchrun or SLURM +
  torchrun) the process joins the group it was given and never relaunches.
* ``--gpus N`` with N > 1 re-runs the same command line as N local processes
  (:func:`cpc_fast.training.distributed.launch`), then returns.
* ``--gpus 0``, or no CUDA device, runs on the CPU; several CPU processes use gloo.
"""

from __future__ import annotations

import torch

from cpc_fast.cli.app import invoked_argv
from cpc_fast.errors import UserInputError
from cpc_fast.training import distributed


def needs_launch(gpus: int) -> bool:
    """True when this call must spawn workers instead of training in-process.

    Refuses a ``--gpus`` that is negative or larger than the GPUs visible here: more local
    processes than devices would share GPUs silently. Under a launcher the launcher decides.
    """
    if gpus < 0:
        raise UserInputError(f"--gpus must be 0 or more, got {gpus}")
    if distributed.under_launcher():
        return False
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible and gpus > visible:
        raise UserInputError(f"--gpus {gpus} asks for more GPUs than the {visible} visible here")
    return gpus > 1


def relaunched(gpus: int) -> bool:
    """With ``--gpus N > 1`` outside a launcher, re-runs this command as N processes (blocking)
    and returns True; otherwise returns False and this process does the work."""
    if not needs_launch(gpus):
        return False
    argv = invoked_argv()
    if not argv:
        raise UserInputError("--gpus N > 1 relaunches the command line: run it as cpc-fast")
    distributed.launch(gpus, argv)
    return True


__all__ = ["needs_launch", "relaunched"]
