"""Peak resident set size of this process, for the CPU memory columns of the benchmarks."""

from __future__ import annotations

import resource


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB. VmHWM where Linux has it: ru_maxrss of a
    subprocess starts at its parent's peak (it survives the fork and the exec), so a growth
    measured from it would hide up to that much of the child's own peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
