"""Proof that an interpreted kernel touches only the memory of its own tensor arguments.

On a GPU an index past a tensor is an illegal address (far) or a silent read of a
neighbour's bytes (near); Triton's interpreter reads raw host memory without a check, so
neither shows. :func:`bounds_checked` wraps the interpreter: each launch registers the
storages of its tensor arguments, and every load, store and atomic checks its unmasked
addresses against them. An address outside is recorded and masked off (so a far index
cannot crash the test process), and the test asserts that nothing was recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def bounds_checked() -> Iterator[list[str]]:
    """Yields the list of out-of-bounds accesses ("kernel: load at 0x..., N lanes") made by
    interpreted launches inside the block."""
    from triton.runtime import interpreter

    violations: list[str] = []
    ranges: list[tuple[int, int]] = []
    current = [""]
    grid_call = interpreter.GridExecutor.__call__
    builder = interpreter.InterpreterBuilder
    load, store, rmw = (
        builder.create_masked_load,
        builder.create_masked_store,
        builder.create_atomic_rmw,
    )

    def launch(self, *args, **kwargs):
        saved = list(ranges), current[0]
        ranges.clear()
        current[0] = self.fn.__name__
        for arg in (*args, *kwargs.values()):
            if hasattr(arg, "untyped_storage"):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            ranges[:], current[0] = saved

    def inside(what: str, ptrs, mask):
        """mask with the lanes whose element lies outside every argument switched off."""
        addr = np.asarray(ptrs.data, dtype=np.uint64)
        size = np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        ok = np.zeros(addr.shape, dtype=bool)
        for start, end in ranges:
            ok |= (addr >= start) & (addr + size <= end)
        active = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
        outside = active & ~ok
        if outside.any():
            violations.append(
                f"{current[0]}: {what} at {hex(int(addr[outside][0]))}, {int(outside.sum())} lanes"
            )
        return interpreter.TensorHandle(active & ok, mask.dtype)

    def checked_load(self, ptrs, mask, other, *rest):
        return load(self, ptrs, inside("load", ptrs, mask), other, *rest)

    def checked_store(self, ptrs, value, mask, *rest):
        return store(self, ptrs, value, inside("store", ptrs, mask), *rest)

    def checked_rmw(self, op, ptrs, val, mask, *rest):
        return rmw(self, op, ptrs, val, inside("atomic", ptrs, mask), *rest)

    interpreter.GridExecutor.__call__ = launch
    builder.create_masked_load = checked_load
    builder.create_masked_store = checked_store
    builder.create_atomic_rmw = checked_rmw
    try:
        yield violations
    finally:
        interpreter.GridExecutor.__call__ = grid_call
        builder.create_masked_load, builder.create_masked_store = load, store
        builder.create_atomic_rmw = rmw
