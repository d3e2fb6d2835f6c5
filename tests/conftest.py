"""Shared test setup.

Triton kernels run on the CPU through Triton's interpreter. ``TRITON_INTERPRET`` must be set
before triton is first imported, so it is set here, at collection time, unless a CUDA device
is present (then the ``cuda``-marked tests exercise the real compiler) or the caller chose.
"""

from __future__ import annotations

import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# Prepared corpora go to a folder of this session (subprocesses inherit it), never to the
# user's cache.
os.environ["CPC_FAST_CACHE"] = tempfile.mkdtemp(prefix="cpc-fast-test-cache-")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Tiny ops on a shared 2-core CPU: one intra-op thread avoids OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
