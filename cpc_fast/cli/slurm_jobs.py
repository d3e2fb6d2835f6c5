"""What a job of ``--launcher slurm`` runs on each node (:mod:`cpc_fast.cli.slurm` submits
it; submitit pickles it, and unpickles it on the node).

* :class:`PretrainJob`, one task per node: this node's workers of the run, launched by
  torchrun's launcher in this process (:func:`cpc_fast.training.distributed.launch`) into
  one group with the other nodes' through a c10d rendezvous on the first node (its address
  and a port derived from the job id: submitit's ``TorchDistributedEnvironment``).
* :class:`ExperimentJob`, one per array task: the experiment command as a child process,
  whose workers share the output folder with the other tasks'.

Preemption and time limits (:mod:`cpc_fast.training.preemption`): SLURM sends submitit's
signal (SIGUSR2) to every process of the job ``--signal-delay`` seconds before the limit,
or at a preemption where the cluster does. The workers finish their step and save it (or
release their unit) and exit with status 75. On the first node submitit calls
:meth:`_NodeJob.checkpoint`, which passes the signal on to this task's children (in case
only the task got it), waits until they have exited, and returns the same job: submitit
requeues it (``scontrol requeue``), and the requeued job resumes from what was saved. A
plain SIGTERM (``scancel``, or a preemption the cluster requeues itself) stops the workers
the same way, and the job ends without requeueing itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from cpc_fast.io.claims import process_alive
from cpc_fast.training import distributed
from cpc_fast.training.preemption import PREEMPTED_EXIT_STATUS, Preempted


def _children() -> list[int]:
    """The pids of this process's children (Linux, from /proc)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # After the command name (which may hold spaces and parentheses): state, ppid, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


class _NodeJob(submitit.helpers.Checkpointable):
    """A node's share of a job: the command line to run (without the SLURM options), the
    folder it was submitted from, and how long :meth:`checkpoint` waits for the workers."""

    def __init__(self, argv: list[str], cwd: str, wait_s: float) -> None:
        self.argv, self.cwd, self.wait_s = list(argv), cwd, wait_s

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the first node at SLURM's warning signal, before it
        requeues the job: the signal passed on to the workers, which save; then the same job
        again (its state is the run's folder)."""
        signum = signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]
        children = _children()
        for pid in children:
            try:
                os.kill(pid, signum)  # a repeat of what SLURM sent is ignored
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.wait_s
        while any(process_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        return super().checkpoint(*args, **kwargs)


class PretrainJob(_NodeJob):
    """``cpc-fast pretrain``'s workers on this node (module docstring)."""

    def __init__(self, argv: list[str], cwd: str, wait_s: float, processes_per_node: int) -> None:
        super().__init__(argv, cwd, wait_s)
        self.processes_per_node = processes_per_node

    def __call__(self) -> str:
        os.chdir(self.cwd)
        job = submitit.JobEnvironment()
        endpoint = None
        if job.num_nodes > 1:
            place = submitit.helpers.TorchDistributedEnvironment()
            endpoint = f"{place.master_addr}:{place.master_port}"
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        try:
            distributed.launch(
                self.processes_per_node,
                self.argv,
                nodes=job.num_nodes,
                endpoint=endpoint,
                run_id=f"cpc-fast-{job.job_id}-{restarts}",
                # submitit's own: checkpoint() passes it on, then requeues
                keep_signals=(signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"],),
            )
        except Preempted as exc:
            raise UncompletedJobError(f"pretrain {exc.describe()}") from None
        return "done"


class ExperimentJob(_NodeJob):
    """``cpc-fast experiment`` as one worker launch on this node (module docstring)."""

    def __call__(self) -> str:
        os.chdir(self.cwd)
        code = subprocess.call([sys.executable, "-m", "cpc_fast", *self.argv])
        if code == PREEMPTED_EXIT_STATUS:
            raise UncompletedJobError(
                "experiment preempted: its units are kept; run the same command to resume"
            )
        if code != 0:
            raise FailedJobError(f"cpc-fast experiment exited with status {code}")
        return "done"


__all__ = ["ExperimentJob", "PretrainJob"]
