"""How many CPU cores this process may really use.

    available_cpus()   # e.g. 2 on a 2-core VM, 4 in a container limited to `--cpus 4`

``os.cpu_count()`` and ``torch.get_num_threads()`` count the machine's cores; a process
pinned to some of them (``taskset``, SLURM's ``--cpus-per-task``, ``os.sched_setaffinity``)
or in a container with a CPU quota (Docker's ``--cpus``, Kubernetes' limits: the cgroup's
``cpu.max``, or ``cpu.cfs_quota_us`` under cgroup v1) gets less. Starting a worker per
counted core there would oversubscribe the few it has, so every default that fills the CPU
starts from this count. :func:`intra_op_threads` sets torch's threads for a block.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_v2_quota(root: Path) -> float | None:
    """``cpu.max`` of this process's cgroup and of each cgroup above it (a parent's limit
    binds its children too): the smallest quota / period, or None without a limit."""
    try:
        line = next(
            entry for entry in _PROC_CGROUP.read_text().splitlines() if entry.startswith("0::")
        )
    except (OSError, StopIteration):
        return None
    group = root / line[3:].lstrip("/")
    limits = []
    for folder in (group, *group.parents):
        if root not in (folder, *folder.parents):
            break
        limits.append(_quota_of(folder / "cpu.max"))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def _quota_of(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or float(period) <= 0:
        return None
    return float(quota) / float(period)


def _cgroup_v1_quota(root: Path) -> float | None:
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
    return None


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 cores keeps two busy half the time), at least 1."""
    cpus = _affinity_cpus()
    quota = _cgroup_v2_quota(_CGROUP_ROOT)
    if quota is None:
        quota = _cgroup_v1_quota(_CGROUP_ROOT)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def share_of_cores(processes: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``processes`` on this host: ``OMP_NUM_THREADS`` when it
    is set to a positive number (the user's word, or a launcher's), else the ``cores``
    (default: those this process may use) shared among them, at least 1."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    cores = available_cpus() if cores is None else cores
    return max(1, cores // processes)


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block (0: left as they are),
    restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["available_cpus", "intra_op_threads", "share_of_cores"]
