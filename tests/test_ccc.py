"""CCC and the CCC loss against an independent float64 implementation (Lin 1989, eq. 7 of
the paper written with Pearson's rho from numpy.corrcoef)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpc_fast.losses.ccc import CCCLoss, ccc, ccc_loss


def reference_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2), population sigma, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sx, sy = x.std(), y.std()
    gap = (x.mean() - y.mean()) ** 2
    if sx == 0 and sy == 0:
        return 1.0 if gap == 0 else 0.0
    if sx == 0 or sy == 0:
        return 0.0
    rho = np.corrcoef(x, y)[0, 1]
    return 2 * rho * sx * sy / (sx**2 + sy**2 + gap)


@pytest.mark.parametrize("n", [2, 3, 17, 500])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_matches_reference(n: int, dtype: torch.dtype, tol: float) -> None:
    rng = np.random.default_rng(n)
    y = rng.normal(3.0, 0.8, size=(n, 3))
    x = 0.6 * y + rng.normal(0.4, 0.5, size=(n, 3))
    got = ccc(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))
    assert got.shape == (3,) and got.dtype == dtype
    for j in range(3):
        assert got[j].item() == pytest.approx(reference_ccc(x[:, j], y[:, j]), abs=tol)


def test_one_dimensional_and_known_values() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert ccc(y, y).item() == pytest.approx(1.0)
    assert ccc(-y, y).item() == pytest.approx(reference_ccc(-y.numpy(), y.numpy()))
    assert ccc(y + 1.0, y).item() == pytest.approx(reference_ccc(y.numpy() + 1, y.numpy()))
    # Scale-sensitive (unlike Pearson): the same correlation, a smaller CCC.
    assert ccc(2 * y, y).item() < 1.0
    assert ccc(y, y).dim() == 0


def test_constant_predictions() -> None:
    y = torch.tensor([[1.0, 2.0, 5.0], [2.0, 2.0, 5.0], [4.0, 2.0, 5.0]], dtype=torch.float64)
    # col 0: constant vs varying -> 0; col 1: both constant, equal -> 1; col 2: unequal -> 0
    x = torch.tensor([[2.5, 2.0, 1.0]] * 3, dtype=torch.float64)
    got = ccc(x, y)
    expected = [reference_ccc(x[:, j].numpy(), y[:, j].numpy()) for j in range(3)]
    assert expected == [0.0, 1.0, 0.0]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_constant_value_whose_mean_rounds() -> None:
    # 0.1 summed 7 times is not 0.7 in binary: the constant must still count as constant.
    x = torch.full((7,), 0.1, dtype=torch.float32)
    assert ccc(x, x.clone()).item() == 1.0
    assert ccc(x, torch.arange(7.0)).item() == 0.0


def test_gradient_of_a_collapsed_prediction_points_at_the_targets() -> None:
    """Constant outputs (a collapsed network) still get the covariance gradient."""
    y = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    x = torch.full((4,), 2.0, dtype=torch.float64, requires_grad=True)
    loss = 1 - ccc(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # d(1 - CCC)/dx_i = -2 (y_i - mean y) / (N * denom) at a constant x
    denom = y.var(unbiased=False) + (2.0 - y.mean()) ** 2
    torch.testing.assert_close(x.grad, -2 * (y - y.mean()) / (4 * denom))


def test_gradients_finite_when_identical_constants() -> None:
    x = torch.full((5, 3), 3.0, dtype=torch.float64, requires_grad=True)
    ccc_loss(x, torch.full((5, 3), 3.0, dtype=torch.float64)).backward()
    assert torch.isfinite(x.grad).all()


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(9, 3)), requires_grad=True)
    y = torch.tensor(rng.normal(size=(9, 3)))
    assert torch.autograd.gradcheck(lambda a: ccc_loss(a, y), (x,))


def test_loss_weights() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    per = [reference_ccc(x[:, j], y[:, j]) for j in range(3)]
    xt, yt = torch.tensor(x), torch.tensor(y)
    assert ccc_loss(xt, yt).item() == pytest.approx(1 - sum(per) / 3)
    w = (0.5, 0.3, 0.2)
    assert ccc_loss(xt, yt, w).item() == pytest.approx(
        1 - sum(a * b for a, b in zip(w, per, strict=True))
    )
    assert CCCLoss(w)(xt, yt).item() == pytest.approx(ccc_loss(xt, yt, w).item())
    assert ccc_loss(yt, yt).item() == pytest.approx(0.0, abs=1e-12)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        ccc(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="N >= 1"):
        ccc(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="weights"):
        ccc_loss(torch.zeros(4, 3), torch.zeros(4, 3), (0.5, 0.5))
