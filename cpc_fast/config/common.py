"""What the two runs share: where they execute, and the settings they both declare.

:class:`Execution` is a base of :class:`~cpc_fast.config.pretrain.PretrainConfig` and
:class:`~cpc_fast.config.experiment.ExperimentConfig`: the GPUs, CPU processes and threads of
a launch, with the same flags, checks and meaning in both commands. The remaining shared
settings (the seed, the cache folder) mean different things in each run, so each run declares
them through the functions below, with its own words for what they steer.

What a launch uses when the user names nothing (``None`` in these fields) is decided here
too, in :meth:`Execution.cpu_plan`, so that both commands fill a CPU the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cpc_fast.io.cpus import available_cpus, share_of_cores
from cpc_fast.settings import Config, at_least, non_negative, optional, setting


@dataclass(frozen=True)
class CPUPlan:
    """How a launch on the CPU uses the cores: ``processes`` x ``threads`` of the
    ``cores`` this process may use (:func:`~cpc_fast.io.cpus.available_cpus`)."""

    processes: int
    threads: int  # intra-op threads of each process; 0 = torch's default
    cores: int

    def describe(self, what: str) -> str:
        """One line for the start of a command: ``"2 CPU workers x 1 thread (2 cores)"``."""
        threads = _count(self.threads, "thread") if self.threads else "torch's default threads"
        cores = _count(self.cores, "core")
        return f"{_count(self.processes, 'CPU ' + what)} x {threads} ({cores} here)"


def _count(n: int, word: str) -> str:
    plural = word + ("es" if word.endswith("s") else "s")
    return f"{n} {word if n == 1 else plural}"


@dataclass
class Execution(Config):
    """Where a run executes: GPUs, or CPU processes and their threads. Every field is
    resumable: a run resumed on other hardware is the same run (its later steps' float
    rounding may differ)."""

    gpus: int = setting(
        1,
        flag=True,
        check=non_negative,
        resumable=True,
        help="Local GPUs (at most those visible), one process each; 0 = the CPU, as is 1 "
        "without CUDA. Under torchrun the launcher decides.",
    )
    cpu_processes: int | None = setting(
        None,
        flag=True,
        check=optional(at_least(1)),
        resumable=True,
        help="Run N CPU processes instead of using GPUs, at most the cores here.",
    )
    threads: int | None = setting(
        None,
        flag=True,
        check=optional(at_least(0)),
        resumable=True,
        help="CPU threads (intra-op) of each process; 0 = torch's default.",
    )

    # The rule for `threads=None`, per run: "share" gives each process its share of the
    # cores, an int is that many threads.
    default_threads: ClassVar[int | str] = "share"

    def __post_init__(self) -> None:
        if self.cpu_processes == 0:  # what earlier versions wrote for "not asked for"
            self.cpu_processes = None
        super().__post_init__()

    def uses_cuda(self, cuda_devices: int) -> bool:
        """Whether a launch with ``cuda_devices`` visible runs on GPUs."""
        return self.cpu_processes is None and self.gpus > 0 and cuda_devices > 0

    def cpu_plan(self, processes: int, cores: int | None = None) -> CPUPlan:
        """``processes`` on the CPU with this run's threads: ``threads``, else
        ``default_threads``: a fixed count, or "share": ``OMP_NUM_THREADS`` where the
        environment sets it (the user's word, or the launcher's), else a process's share of
        the ``cores`` (:func:`~cpc_fast.io.cpus.share_of_cores`)."""
        cores = available_cpus() if cores is None else cores
        threads = self.threads
        if threads is None:
            rule = type(self).default_threads
            threads = share_of_cores(processes, cores) if rule == "share" else rule
        return CPUPlan(processes=processes, threads=threads, cores=cores)


def seed_setting(derives: str) -> Any:
    """The run's random seed (0 by default); ``derives`` says what comes from it."""
    return setting(0, flag=True, help=f"Random seed: {derives}.")


def cache_dir_setting(holds: str, default_text: str) -> Any:
    """A cache folder the run reads first and fills when it must (resumable: moving a
    cache changes no result)."""
    return setting(
        None, flag=True, resumable=True, metavar="PATH", help=holds, default_text=default_text
    )


__all__ = ["CPUPlan", "Execution", "cache_dir_setting", "seed_setting"]
