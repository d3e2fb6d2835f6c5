"""The fused loss inside CUDA graphs: no host read, and fresh negatives at every replay.

A host read in the op (``int(seed)``, ``.item()`` of an index range) is a device sync
that cannot be captured in a CUDA graph, and a seed read at capture time would be replayed
forever. On a CPU the interpreted op is watched for every host read (the tensor methods
behind ``int()``, ``.item()``, ``bool()``); on a GPU (``cuda`` marks, bench/gpu_check.sh)
a graph is captured and replayed.
"""

from __future__ import annotations

import os

import pytest
import torch

from cpc_fast.losses import cpc_info_nce
from cpc_fast.losses.info_nce import info_nce

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _HostReads:
    """Counts the reads of a tensor's value into Python (int(), .item(), bool(), ...), each
    a device sync for a CUDA tensor, made inside the block (custom ops included: the count
    sits on the tensor methods, below any dispatch)."""

    METHODS = ("__int__", "__index__", "__bool__", "__float__", "item", "tolist")

    def __enter__(self):
        self.reads = []
        self.saved = {name: getattr(torch.Tensor, name) for name in self.METHODS}
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, self._counted(name, method))
        return self

    def _counted(self, name, method):
        def read(tensor, *args, **kwargs):
            self.reads.append(f"{name} of {tuple(tensor.shape)} {tensor.dtype}")
            return method(tensor, *args, **kwargs)

        return read

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


def _cpc(B=2, K=3, L=11, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, L, K, D, generator=g).permute(0, 2, 1, 3).to(DEVICE)
    z = torch.randn(B, L, D, generator=g).to(DEVICE)
    return pred.requires_grad_(), z.requires_grad_()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 5},  # an int seed
        {},  # torch's default generator
        {"design": "dense", "seed": 5},
        {"design": "gather", "neg_index": "given", "check_indices": False},
    ],
    ids=["philox-seed", "philox-default", "dense-seed", "gather-unchecked"],
)
def test_cpc_loss_reads_nothing_to_the_host(kwargs):
    pred, z = _cpc()
    if kwargs.get("neg_index") == "given":
        kwargs = kwargs | {"neg_index": torch.randint(0, 11, (2, 3, 11, 4), device=DEVICE)}
    else:
        kwargs = kwargs | {"num_negatives": 6}
    with _HostReads() as watch:
        out = cpc_info_nce(pred, z, backend="fused", **kwargs)
        out.loss.backward()
    assert watch.reads == []


@pytest.mark.parametrize("deterministic", [False, True])
def test_unchecked_general_loss_reads_nothing_to_the_host(deterministic):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(9, 12, generator=g).to(DEVICE).requires_grad_()
    keys = torch.randn(7, 12, generator=g).to(DEVICE).requires_grad_()
    pos = torch.randint(0, 7, (9,), generator=g).to(DEVICE)
    neg = torch.randint(0, 7, (9, 4), generator=g).to(DEVICE)
    with _HostReads() as watch:
        loss = info_nce(q, keys, pos, neg, backend="fused", mask_duplicates="value",
                        deterministic=deterministic, check_indices=False)  # fmt: skip
        loss.backward()
    assert watch.reads == []


def test_a_device_seed_tensor_gives_the_draws_of_its_value():
    pred, z = _cpc()
    seed = torch.tensor(2**40 + 3, device=DEVICE)
    a = cpc_info_nce(pred, z, num_negatives=6, seed=seed, backend="fused")
    b = cpc_info_nce(pred, z, num_negatives=6, seed=2**40 + 3, backend="fused")
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


# --- compiled kernels on a GPU (bench/gpu_check.sh) -----------------------------------------


def _captured_step(pred, z, seed=None):
    """A CUDA graph of the loss's forward and backward; returns (graph, loss, grads)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: the Triton compiles happen outside capture
        for _ in range(2):
            out = cpc_info_nce(pred, z, num_negatives=8, seed=seed, backend="fused")
            torch.autograd.grad(out.loss, [pred, z])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if seed is not None:
            seed.add_(1)  # the caller's key, advanced on the device at every replay
        out = cpc_info_nce(pred, z, num_negatives=8, seed=seed, backend="fused")
        grads = torch.autograd.grad(out.loss, [pred, z])
    return graph, out.loss, grads


@pytest.mark.cuda
def test_cuda_graph_replays_draw_fresh_negatives():
    pred, z = _cpc(B=4, K=12, L=128, D=64)
    graph, loss, (gp, _) = _captured_step(pred, z)
    losses, grads = [], []
    for _ in range(3):
        graph.replay()
        losses.append(loss.item())
        grads.append(gp.clone())
    assert len(set(losses)) == 3  # torch's generator advanced: new negatives each replay
    assert not torch.equal(grads[0], grads[1])


@pytest.mark.cuda
def test_cuda_graph_replays_read_the_current_device_seed():
    pred, z = _cpc(B=4, K=12, L=128, D=64)
    seed = torch.tensor(100, device="cuda")
    graph, loss, (gp, gz) = _captured_step(pred, z, seed)
    for _ in range(3):
        graph.replay()
        key = int(seed)
        eager = cpc_info_nce(pred, z, num_negatives=8, seed=key, backend="fused")
        want = torch.autograd.grad(eager.loss, [pred, z])
        torch.testing.assert_close(loss, eager.loss, rtol=0, atol=0)
        torch.testing.assert_close(gp, want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gz, want[1], rtol=1e-5, atol=1e-6)


# --- compiled graphs: the index check is a device-side assertion --------------------------


@pytest.mark.parametrize(
    ("form", "backend"),
    # The general reference is a custom op of its own that always checks on the host: it
    # is the CPU path, which CUDA graphs do not concern.
    [("cpc", "fused"), ("cpc", "reference"), ("general", "fused")],
)
def test_compiled_index_check_reads_nothing_and_still_refuses_bad_indices(form, backend):
    torch._dynamo.reset()
    pred, z = _cpc()
    B, K, L, D = pred.shape
    g = torch.Generator().manual_seed(3)
    if form == "cpc":
        neg = torch.randint(0, L, (B, K, L, 4), generator=g).to(DEVICE)

        def loss(pred, z, neg):
            return cpc_info_nce(pred, z, neg_index=neg, backend=backend).loss

        args = (pred, z, neg)
    else:
        q, keys = pred.reshape(-1, D), z.reshape(-1, D)
        pos = torch.randint(0, keys.shape[0], (q.shape[0],), generator=g).to(DEVICE)
        neg = torch.randint(0, keys.shape[0], (q.shape[0], 4), generator=g).to(DEVICE)

        def loss(q, keys, pos, neg):
            return info_nce(q, keys, pos, neg, backend=backend)

        args = (q, keys, pos, neg)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager = loss(*args)
    torch.testing.assert_close(compiled(*args), eager)  # traced, and the same loss
    with _HostReads() as watch:
        compiled(*args).backward()
    assert watch.reads == []
    neg[0, ...] = 10**6  # far outside the keys
    with pytest.raises(RuntimeError, match="outside"):
        compiled(*args)
