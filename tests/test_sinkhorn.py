"""log_sinkhorn against POT's log-domain Sinkhorn, its marginals, masks, dtypes and gradients."""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from rrg_core.sinkhorn import log_sinkhorn

EPS = 0.05


def random_mask(generator: torch.Generator, *shape: int, keep: float = 0.7) -> torch.Tensor:
    mask = torch.rand(*shape, generator=generator) < keep
    mask[..., 0] = True  # at least one valid entry
    return mask


def pot_plan(cost: np.ndarray, epsilon: float) -> np.ndarray:
    n, m = cost.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    return ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn_log", numItermax=20_000, stopThr=1e-13)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (49, 32), (98, 7)])
@pytest.mark.parametrize("epsilon", [EPS, 0.5])
def test_plan_matches_pot(shape: tuple[int, int], epsilon: float) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    cost = torch.rand(*shape, generator=g, dtype=torch.float64) * 2  # 1 - cosine lies in [0, 2]
    result = log_sinkhorn(cost, epsilon, max_iter=20_000, tol=1e-13)
    expected = pot_plan(cost.numpy(), epsilon)
    np.testing.assert_allclose(result.plan.numpy(), expected, rtol=1e-7, atol=1e-12)


def test_masked_plan_is_pot_on_the_unmasked_subproblem() -> None:
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 20, 12, generator=g, dtype=torch.float64)
    rows, cols = random_mask(g, 3, 20), random_mask(g, 3, 12, keep=0.5)
    cost[~(rows[:, :, None] & cols[:, None, :])] = float("inf")  # padding must not leak in
    plan = log_sinkhorn(cost, EPS, max_iter=20_000, tol=1e-13, row_mask=rows, col_mask=cols).plan
    for b in range(3):
        sub = cost[b][rows[b]][:, cols[b]].numpy()
        np.testing.assert_allclose(plan[b][rows[b]][:, cols[b]].numpy(), pot_plan(sub, EPS), rtol=1e-7, atol=1e-12)
        assert (plan[b][~rows[b]] == 0).all() and (plan[b][:, ~cols[b]] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marginals_within_tolerance(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    cost = (torch.rand(4, 2, 49, 32, generator=g) * 2).to(dtype)
    cols = random_mask(g, 4, 1, 32)
    result = log_sinkhorn(cost, EPS, col_mask=cols)
    assert result.plan.dtype == dtype and result.plan.shape == (4, 2, 49, 32)
    m_valid = cols.sum(-1, keepdim=True).to(dtype)
    row_sums, col_sums = result.plan.sum(-1), result.plan.sum(-2)
    assert (row_sums * 49 - 1).abs().max() < 1e-3  # the tolerance is relative to a row's mass
    torch.testing.assert_close(col_sums, torch.where(cols, 1 / m_valid, 0.0).expand_as(col_sums))


def test_early_stop_and_iteration_count() -> None:
    cost = torch.rand(2, 49, 32, generator=torch.Generator().manual_seed(2))
    assert log_sinkhorn(cost, EPS, max_iter=100, tol=1e-3).n_iter < 100
    assert log_sinkhorn(cost, EPS, max_iter=17, tol=0.0).n_iter == 17
    loose, tight = log_sinkhorn(cost, EPS, tol=1e-2), log_sinkhorn(cost, EPS, tol=1e-6, max_iter=1000)
    assert loose.n_iter < tight.n_iter
    assert (tight.plan.sum(-1) * 49 - 1).abs().max() < 1e-6


def test_tolerance_is_relative_to_the_row_mass() -> None:
    """With 1,600 patch rows a row's mass is 6e-4: an absolute tolerance of 1e-3 accepted the
    plan after 5 iterations with rows 16 % off; the relative one keeps iterating."""
    g = torch.Generator().manual_seed(0)
    patches = torch.nn.functional.normalize(torch.randn(2, 1600, 8, generator=g), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(2, 34, 8, generator=g), dim=-1)
    result = log_sinkhorn(1 - patches @ prompts.transpose(-1, -2), EPS, tol=1e-3)
    assert result.n_iter > 5
    assert (result.plan.sum(-1) * 1600 - 1).abs().max() < 1e-3


def test_batch_dims_broadcast_against_masks() -> None:
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(2, 4, 10, 6, generator=g)  # [B, heads, N, M]
    cols = random_mask(g, 2, 1, 6)  # one prompt mask per sample, shared by the heads
    batched = log_sinkhorn(cost, EPS, tol=0.0, max_iter=30, col_mask=cols).plan
    for b in range(2):
        for h in range(4):
            single = log_sinkhorn(cost[b, h], EPS, tol=0.0, max_iter=30, col_mask=cols[b, 0]).plan
            torch.testing.assert_close(batched[b, h], single)


def test_bfloat16_is_finite_and_close_to_float32() -> None:
    cost = torch.rand(2, 4, 98, 32, generator=torch.Generator().manual_seed(4)) * 2
    half = log_sinkhorn(cost.bfloat16(), EPS)
    full = log_sinkhorn(cost.bfloat16().float(), EPS)  # the same (rounded) problem in float32
    assert half.plan.dtype == torch.bfloat16 and torch.isfinite(half.plan).all()
    torch.testing.assert_close(half.plan.float(), full.plan, rtol=1e-2, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = log_sinkhorn(cost, EPS)
    assert auto.plan.dtype == torch.float32 and torch.isfinite(auto.plan).all()


def test_all_masked_gives_zeros() -> None:
    cost = torch.rand(2, 5, 4)
    cols = torch.tensor([[True, False, True, False], [False, False, False, False]])
    plan = log_sinkhorn(cost, EPS, col_mask=cols).plan
    assert torch.isfinite(plan).all() and (plan[1] == 0).all()
    torch.testing.assert_close(plan[0].sum(-2), torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_gradients_exact_and_finite() -> None:
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cols = torch.tensor([[True, True, False, True], [True, True, True, True]])
    weights = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)

    def objective(c: torch.Tensor) -> torch.Tensor:
        return (log_sinkhorn(c, 0.1, max_iter=20, tol=0.0, col_mask=cols).plan * weights).sum()

    assert torch.autograd.gradcheck(objective, (cost,))

    cost32 = (torch.rand(3, 49, 32, generator=g) * 2).requires_grad_()
    cols32 = random_mask(g, 3, 32)
    padded = torch.where(cols32[:, None, :], cost32, float("inf"))  # inf padding must not poison gradients
    plan = log_sinkhorn(padded, EPS, col_mask=cols32).plan
    (plan * torch.randn(3, 49, 32, generator=g)).sum().backward()
    assert torch.isfinite(cost32.grad).all() and cost32.grad.abs().sum() > 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        log_sinkhorn(torch.rand(3, 4), epsilon=0.0)
    with pytest.raises(ValueError):
        log_sinkhorn(torch.rand(3, 4), col_mask=torch.ones(5, dtype=torch.bool))
