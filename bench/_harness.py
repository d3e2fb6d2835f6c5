"""What every benchmark suite shares: the device, one measured case, and what is recorded.

A *case* is one provider of one group (``Case``): the providers of a group compute the same
thing at the same shape, and the table at the end of the session compares them with the
group's named baseline. :func:`measure` runs one case:

1. one untimed call (compilation, autotuning, allocator warm-up), then ``check`` on its output;
2. one call that measures the peak extra memory: CUDA, ``torch.cuda.max_memory_allocated``
   above what was allocated before the call; CPU, the growth of the process's resident set
   (``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) above its size
   before the call. What the caller already holds (inputs, model, optimizer state) is
   excluded either way;
3. pytest-benchmark's rounds (``benchmark.pedantic``): as many as ``--benchmark-max-time``
   allows, at least ``--benchmark-min-rounds``, at most ``MAX_ROUNDS``. GPU work is timed
   with CUDA events around each call; the host time of the same call (which ends with a
   device synchronisation) is what pytest-benchmark records, and both are kept.

A case that cannot run here is skipped through :meth:`Case.skip`, which records why: the
tables list it as "not measured", never as a number.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import pytest
import torch

from cpc_fast.losses.info_nce import fused_status

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
MAX_ROUNDS = 200
DEADLINE_ENV = "BENCH_DEADLINE"  # Unix time after which no case starts (bench/gpu_check.py)
PARTIAL_ENV = "BENCH_PARTIAL"  # a JSON-lines file: each case as it ends (bench/gpu_check.py)
NOT_MEASURED: list[dict[str, str]] = []  # cases skipped in this session, with the reason


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def device_name(device: str = DEVICE) -> str:
    """What a case ran on, for the tables: the GPU's name, or the CPU model and its cores."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {cpu_cores()} cores"


def device_slug() -> str:
    """This machine's results folder under bench/results/: ``cuda-nvidia-h200``,
    ``cpu-intel-xeon-processor-2.80ghz-2c``. Runs compare only within one folder."""
    name = device_name() if ON_GPU else cpu_model()
    name = re.sub(r"\((r|tm)\)|\bcpu\b|@", " ", name.lower())
    slug = re.sub(r"[^a-z0-9.]+", "-", name).strip("-")
    return f"cuda-{slug}" if ON_GPU else f"cpu-{slug}-{cpu_cores()}c"


def fused_unavailable() -> str | None:
    """Why the fused Triton kernels cannot be timed here, or None when they can."""
    ok, why = fused_status()
    if not ok:
        return why
    from cpc_fast.kernels.info_nce import interpreted  # optional: Triton (fused_status saw it)

    if interpreted():
        return "TRITON_INTERPRET is set: the interpreter's time is not the kernels'"
    return None


@dataclass(frozen=True)
class Case:
    """One provider of one group. ``shape`` is the shape this run used (written in the
    tables: on a CPU some suites run a scaled-down shape); ``device`` says where the work
    runs (CPU-side suites say "cpu" on a GPU machine too); ``needs_s`` is how much time a
    case must have left before a deadline to start (a compile takes longer)."""

    group: str
    provider: str
    baseline: str
    shape: str
    device: str = DEVICE
    needs_s: float = 20.0

    def record(self) -> dict[str, Any]:
        info = asdict(self)
        del info["needs_s"]
        info["device"] = device_name(self.device)
        return info

    def skip(self, reason: str) -> NoReturn:
        NOT_MEASURED.append({**self.record(), "reason": reason})
        log_partial(not_measured=NOT_MEASURED[-1])
        pytest.skip(f"not measured: {reason}")

    def skip_past_deadline(self) -> None:
        """Skips the case when it would not finish before the GPU check's deadline
        (``BENCH_DEADLINE``): ``needs_s`` is what it must have left to start."""
        deadline = os.environ.get(DEADLINE_ENV)
        if deadline and time.time() + self.needs_s > float(deadline):
            self.skip("the time budget of bench/gpu_check.py was spent before this case")

    def skip_unless_fused(self) -> None:
        reason = fused_unavailable()
        if reason:
            self.skip(reason)


def log_partial(**record: dict) -> None:
    """Appends a finished or skipped case to ``$BENCH_PARTIAL``: what is left of a run that
    was stopped before pytest-benchmark wrote its JSON."""
    path = os.environ.get(PARTIAL_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def import_needing_soundfile(case: Case, *modules: str) -> list:
    """Imports library modules that reach ``cpc_fast.data.audio`` (which reads audio with
    soundfile and resamples with soxr); where either is missing (the GPU image), the case is
    recorded as not measured instead of the whole suite failing to collect."""
    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        if exc.name not in ("soundfile", "soxr"):
            raise
        case.skip(f"{exc.name} is not installed (cpc_fast.data imports it); carry its wheels")
    except OSError as exc:  # soundfile without its libsndfile
        case.skip(f"soundfile cannot load libsndfile ({exc})")


def sync(device: str = DEVICE) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(
    benchmark,
    case: Case,
    target: Callable[..., Any],
    setup: Callable[[], tuple] | None = None,
    check: Callable[[Any], None] | None = None,
) -> float | None:
    """Times ``target(*setup())`` as described in the module docstring and records the case
    in ``benchmark.extra_info``. Returns the median seconds (CUDA events on the GPU), or None
    under ``--benchmark-disable`` (one checked call, nothing measured)."""
    case.skip_past_deadline()
    benchmark.group = case.group
    benchmark.extra_info.update(case.record())

    def args() -> tuple:
        return setup() if setup is not None else ()

    if benchmark.disabled:  # one call, still checked: a smoke test of every provider
        out = benchmark.pedantic(target, setup=lambda: (args(), {}))
    else:
        out = target(*args())
        sync(case.device)
    if check is not None:
        check(out)
    del out
    if benchmark.disabled:
        return None
    peak_mb, one_s = _peak_extra_mb(target, args, case.device)
    by_time = math.ceil(benchmark._max_time / max(one_s, 1e-9))
    rounds = max(benchmark._min_rounds, min(MAX_ROUNDS, by_time))
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def timed(*a):
        if case.device != "cuda":
            return target(*a)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = target(*a)
        end.record()
        torch.cuda.synchronize()
        events.append((start, end))
        return out

    def round_setup():
        a = args()
        sync(case.device)  # the setup's own device work stays out of the host time
        return a, {}

    benchmark.pedantic(timed, setup=round_setup, rounds=rounds, iterations=1)
    host_s = benchmark.stats.stats.median
    median_s = statistics.median(s.elapsed_time(e) for s, e in events) / 1e3 if events else host_s
    benchmark.extra_info.update(
        median_ms=round(median_s * 1e3, 4),
        host_median_ms=round(host_s * 1e3, 4),
        timer="cuda-events" if events else "host",
        peak_extra_MB=None if peak_mb is None else round(peak_mb, 1),
    )
    return median_s


def show(benchmark, **columns: str) -> None:
    """Suite-specific columns of the tables (throughput, loss share), already formatted."""
    benchmark.extra_info.setdefault("columns", {}).update(columns)


def median_seconds(fn: Callable[[], Any], rounds: int, device: str = DEVICE) -> float:
    """Median time of ``fn()`` over ``rounds`` calls after one warm-up: CUDA events on the
    GPU, the host clock on the CPU. For figures derived beside a benchmark (a loss share)."""
    fn()
    times = []
    for _ in range(rounds):
        sync(device)
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_extra_mb(target, args, device: str) -> tuple[float | None, float]:
    """(peak extra MB of one call, that call's host seconds)."""
    a = args()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _reset_cpu_peak()
    t0 = time.perf_counter()
    target(*a)
    sync(device)
    seconds = time.perf_counter() - t0
    if device == "cuda":
        return (torch.cuda.max_memory_allocated() - before) / 2**20, seconds
    after = _proc_status_kib("VmHWM:")
    return (None if before is None or after is None else (after - before) / 1024), seconds


def _reset_cpu_peak() -> int | None:
    """Frees what can be freed, resets the peak resident set to the current one (Linux 4.0+)
    and returns the current resident set in KiB; None where that is not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the OS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except (OSError, AttributeError):  # not glibc, or not Linux
        return None
    return _proc_status_kib("VmRSS:")


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
