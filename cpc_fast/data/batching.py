"""Waveform batching: fixed-length CPC batches (crop or repeat-pad) and zero-padded batches.

    batch = repeat_pad(waves, 160000, "random", rng=0)     # (B, 160000) float32
    batch, lengths = pad_collate(waves, multiple_of=160)   # (B, T) float32, (B,) int64

``waves`` is a list of 1-D float32 or int16 numpy arrays (or CPU tensors); int16 is scaled by
1/32768. ``repeat_pad`` is the paper's batching: an utterance of ``n >= length`` samples is cut
to ``w[off:off + length]``, a shorter one is repeated from its start (``out[j] = w[j % n]``).
``pad_collate`` zero-pads to the longest utterance rounded up to ``multiple_of``.

``normalize=True`` maps each row's valid part ``y`` (what would be written without it: the
whole row for ``repeat_pad``, the first ``lengths[i]`` samples for ``pad_collate``, whose
padding stays zero) to ``(y - mean(y)) / sqrt(var(y) + NORM_EPS)``, with the population
variance taken in a second pass. The sums run in float64 as 8 interleaved sequential lanes
(lane k adds ``y[k::8]``) combined pairwise; a repeated row is summed as whole periods times
their count plus the head, so both backends give the same bits.

Two backends, one contract: the C++ extension ``cpc_fast._C`` (multi-threaded, GIL released,
each output written once into a preallocated buffer) and a NumPy fallback used when the
extension is not built (with a warning, once) or when ``CPC_FAST_DISABLE_CPP=1``. Both return
identical bits and raise identical errors: a bad item gives ``TypeError``/``ValueError`` naming
it (``"waves[3]: sample 17 is nan (waveforms must be finite)"``). A NaN/Inf among the float32
samples that are copied is an error (samples a crop skips are not read); without
``normalize`` the C++ backend finds it while copying, so after such an error a caller-provided
``out`` holds unspecified values. This module is the only importer of ``_C``.

Threads: ``num_threads`` argument, else ``CPC_FAST_NUM_THREADS``, else 1 inside a DataLoader
worker and the CPUs this process may run on elsewhere; the C++ side uses fewer for small
batches (about one per MiB of output).

Memory: a fresh 40 MB array costs more than filling it (the kernel zeroes every new page), so
the C++ ``repeat_pad`` recycles its own results: an array of the same shape that nothing refers
to any more (no variable, view or tensor) is handed out again. At most 4 are kept (1 MiB to
256 MiB each); :func:`release_buffers` drops them. Pass ``out=`` to manage memory yourself.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from cpc_fast.data import _batching_numpy
from cpc_fast.errors import UserInputError

NORM_EPS = _batching_numpy.NORM_EPS

DISABLE_ENV = "CPC_FAST_DISABLE_CPP"
THREADS_ENV = "CPC_FAST_NUM_THREADS"

_warned_missing = False


def _load_extension() -> tuple[Any, str]:
    try:
        from cpc_fast import _C  # optional: built by setup.py when a compiler is there
    except ImportError as exc:
        return None, f"the C++ extension cpc_fast._C is not built ({exc})"
    version = getattr(_C, "API_VERSION", None)
    if version != _batching_numpy.API_VERSION:
        return None, (
            f"cpc_fast._C at {_C.__file__} is a stale build (API version {version}, expected "
            f"{_batching_numpy.API_VERSION}); rebuild it with `pip install -e .`"
        )
    return _C, ""


_EXTENSION, _LOAD_PROBLEM = _load_extension()


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0", "false", "False")


def extension_available() -> bool:
    """True when ``cpc_fast._C`` is built and matches this Python code."""
    return _EXTENSION is not None


def active_backend() -> str:
    """``"cpp"`` or ``"numpy"``: what :func:`repeat_pad` and :func:`pad_collate` use now."""
    return "cpp" if _EXTENSION is not None and not _disabled() else "numpy"


def backend_reason() -> str:
    """One line saying why :func:`active_backend` is what it is."""
    if _EXTENSION is None:
        return f"{_LOAD_PROBLEM}; using the NumPy fallback"
    if _disabled():
        return f"{DISABLE_ENV} is set: using the NumPy fallback"
    try:
        threads = f"up to {default_num_threads()} threads"
    except UserInputError as exc:
        threads = str(exc)
    return f"C++ extension cpc_fast._C, {threads}"


def _backend() -> Any:
    global _warned_missing
    if active_backend() == "cpp":
        return _EXTENSION
    if _EXTENSION is None and not _disabled() and not _warned_missing:
        _warned_missing = True
        warnings.warn(
            f"{_LOAD_PROBLEM}; waveform batching falls back to NumPy (slower). Reinstall with "
            "CPC_FAST_STRICT_BUILD=1 to see the build error.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _batching_numpy


def default_num_threads() -> int:
    """``CPC_FAST_NUM_THREADS`` if set; 1 inside a DataLoader worker (the workers are the
    parallelism there); else the number of CPUs this process may use."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserInputError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return int(value)
    torch = sys.modules.get("torch")
    if torch is not None and torch.utils.data.get_worker_info() is not None:
        return 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def release_buffers() -> None:
    """Frees the output arrays that ``repeat_pad`` keeps for reuse (see the module docs)."""
    if _EXTENSION is not None:
        _EXTENSION.release_buffers()


def wave_lengths(waves: Iterable[Any]) -> np.ndarray:
    """(B,) int64 sample counts, after checking each wave as the batching functions do."""
    return _backend().lengths(_as_batch(waves))


def repeat_pad(
    waves: Iterable[Any],
    length: int,
    offsets: str | Sequence[int] | np.ndarray = "start",
    *,
    rng: int | np.random.Generator | None = None,
    normalize: bool = False,
    out: Any = None,
    num_threads: int | None = None,
) -> Any:
    """B waves -> (B, length) float32, each cropped at its offset or repeated from the start.

    Args:
        waves: B 1-D float32/int16 arrays (or CPU tensors); a (B, n) array counts as B rows.
        length: output samples per row (160000 = the paper's 10 s at 16 kHz).
        offsets: where a wave with ``n >= length`` is cut: ``"start"`` (0, the paper's cut at
            10 s), ``"random"`` (uniform over ``[0, n - length]``, drawn from ``rng``) or B
            explicit integers. A shorter wave is repeated from its start; its offset must be 0.
        rng: seed or ``numpy.random.Generator`` for ``offsets="random"``.
        normalize: zero mean, unit variance per row (see the module docstring).
        out: a C-contiguous (B, length) float32 numpy array or CPU tensor (e.g. pinned) to
            write into; it is returned.
        num_threads: threads for the C++ backend (default: :func:`default_num_threads`).

    Returns:
        ``out``, or a new (B, length) float32 numpy array.
    """
    backend = _backend()
    batch = _as_batch(waves)
    length = _as_int("length", length)
    offs = _resolve_offsets(offsets, batch, length, rng, backend)
    result = backend.repeat_pad(
        batch, length, offs, bool(normalize), _as_out_array(out), _resolve_threads(num_threads)
    )
    return result if out is None else out


def pad_collate(
    waves: Iterable[Any],
    multiple_of: int = 1,
    *,
    normalize: bool = False,
    out: Any = None,
    num_threads: int | None = None,
) -> tuple[Any, np.ndarray]:
    """B waves -> (batch (B, T) float32 zero-padded, lengths (B,) int64).

    ``T`` is the longest wave rounded up to ``multiple_of`` (160 = one CPC frame). ``out``, if
    given, must be a C-contiguous (B, T) float32 array or CPU tensor; it is returned as batch.
    """
    backend = _backend()
    batch, lengths = backend.pad_collate(
        _as_batch(waves),
        _as_int("multiple_of", multiple_of),
        bool(normalize),
        _as_out_array(out),
        _resolve_threads(num_threads),
    )
    return (batch if out is None else out), lengths


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} is out of range: {value}")
    return int(value)


def _resolve_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return default_num_threads()
    num_threads = _as_int("num_threads", num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads


def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    return None if torch is None else torch.Tensor


def _as_batch(waves: Iterable[Any]) -> Any:
    """A list/tuple of numpy arrays; other iterables are listed, CPU tensors viewed as arrays."""
    if not isinstance(waves, (list, tuple)):
        if not isinstance(waves, Iterable):
            return waves  # the backend reports the type
        waves = list(waves)
    if all(type(w) is np.ndarray for w in waves):
        return waves
    tensor = _torch_tensor_type()
    if tensor is None:
        return waves
    return [_tensor_as_array(w, i) if isinstance(w, tensor) else w for i, w in enumerate(waves)]


def _tensor_as_array(w: Any, i: int) -> Any:
    if w.device.type != "cpu":
        raise TypeError(f"waves[{i}]: a {w.device} tensor; move it to the CPU first")
    try:
        return w.detach().numpy()
    except TypeError:  # dtypes numpy lacks, e.g. bfloat16
        raise TypeError(
            f"waves[{i}]: dtype {w.dtype} is not supported (use float32 or int16)"
        ) from None


def _as_out_array(out: Any) -> Any:
    """The numpy view to write into: ``out`` itself, or the memory of a CPU float32 tensor."""
    tensor = _torch_tensor_type()
    if tensor is None or not isinstance(out, tensor):
        return out
    if out.device.type != "cpu":
        raise TypeError(f"out must be a CPU tensor, got a {out.device} tensor")
    if out.requires_grad:
        raise ValueError("out must not require grad")
    if str(out.dtype) != "torch.float32":
        raise TypeError(f"out must have dtype float32, got {out.dtype}")
    return out.numpy()


def _resolve_offsets(offsets: Any, batch: Any, length: int, rng: Any, backend: Any) -> np.ndarray:
    """(B,) int64 offsets; ``"random"`` draws from ``rng`` after checking the waves."""
    if isinstance(offsets, str):
        if offsets == "start":
            count = len(batch) if isinstance(batch, (list, tuple)) else 0
            return np.zeros(count, dtype=np.int64)
        if offsets == "random":
            highest = np.maximum(backend.lengths(batch) - length, 0)
            return np.random.default_rng(rng).integers(0, highest + 1, dtype=np.int64)
        raise ValueError(f"offsets must be 'start', 'random' or integers, got {offsets!r}")
    array = np.asarray(offsets)
    if array.dtype.kind not in "iu":
        raise TypeError(f"offsets must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)
