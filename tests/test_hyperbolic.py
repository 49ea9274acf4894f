"""The hyperbolic module against closed-form Poincaré distances written here in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rrg_core.hyperbolic import HyperbolicEncoder, HypLinear, make_ball, pairwise_distance

C = 0.01


def random_ball_points(rng: np.random.Generator, n: int, d: int, c: float = C, max_radius: float = 0.95) -> np.ndarray:
    """Points spread over the ball of radius 1/sqrt(c), up to ``max_radius`` of the way to the edge."""
    directions = rng.normal(size=(n, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = rng.uniform(0, max_radius, size=(n, 1)) / np.sqrt(c)
    return directions * radii


def mobius_add(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    xy = np.sum(x * y, axis=-1, keepdims=True)
    x2 = np.sum(x * x, axis=-1, keepdims=True)
    y2 = np.sum(y * y, axis=-1, keepdims=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return num / (1 + 2 * c * xy + c**2 * x2 * y2)


def artanh_distance(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """d_c(x, y) = (2 / sqrt c) artanh(sqrt c ||(-x) ⊕_c y||), all pairs."""
    diff = mobius_add(-x[:, None, :], y[None, :, :], c)
    return 2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * np.linalg.norm(diff, axis=-1))


def arcosh_distance(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """d_c(x, y) = (1 / sqrt c) arcosh(1 + 2c||x - y||^2 / ((1 - c||x||^2)(1 - c||y||^2))), all pairs."""
    sq = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    den = (1 - c * np.sum(x**2, axis=-1))[:, None] * (1 - c * np.sum(y**2, axis=-1))[None, :]
    return np.arccosh(1 + 2 * c * sq / den) / np.sqrt(c)


def test_make_ball_curvature() -> None:
    ball = make_ball(0.01)
    assert ball.c.item() == pytest.approx(0.01, rel=1e-5)
    assert not ball.isp_c.requires_grad
    assert make_ball(0.5, learnable=True).isp_c.requires_grad
    with pytest.raises(ValueError):
        make_ball(-1.0)


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_pairwise_distance_matches_closed_forms(c: float) -> None:
    rng = np.random.default_rng(0)
    x = random_ball_points(rng, 7, 16, c)
    y = random_ball_points(rng, 5, 16, c)
    expected = artanh_distance(x, y, c)
    np.testing.assert_allclose(expected, arcosh_distance(x, y, c), rtol=1e-9)  # the two forms agree

    got64 = pairwise_distance(torch.from_numpy(x), torch.from_numpy(y), make_ball(c)).numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-5)  # geoopt keeps c in float32
    got32 = pairwise_distance(torch.from_numpy(x).float(), torch.from_numpy(y).float(), make_ball(c)).numpy()
    np.testing.assert_allclose(got32, expected, rtol=2e-3, atol=2e-3)


def test_pairwise_distance_broadcasts_batch_dims() -> None:
    x, y = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    ball = make_ball()
    batched = pairwise_distance(x, y, ball)
    assert batched.shape == (3, 4, 6)
    torch.testing.assert_close(batched[1], pairwise_distance(x[1], y[1], ball))


def test_hyplinear_is_mobius_matvec_plus_bias() -> None:
    """W ⊗_c x = expmap0(W logmap0(x)) for a linear map; the bias is added with ⊕_c."""
    ball = make_ball(C)
    layer = HypLinear(6, 4, ball).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.from_numpy(random_ball_points(np.random.default_rng(1), 10, 6, max_radius=0.8))
    with torch.no_grad():
        matvec = ball.expmap0(ball.logmap0(x) @ layer.weight.T)
        expected = mobius_add(matvec.numpy(), ball.expmap0(layer.bias).numpy(), C)
        np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert "ball" not in dict(layer.named_modules())  # the owner holds the curvature


def test_encoder_outputs_inside_ball_and_finite_for_huge_inputs() -> None:
    torch.manual_seed(0)
    enc = HyperbolicEncoder(75, 64, 32)
    for scale in (1e-8, 1.0, 1e3, 1e8):
        out = enc(torch.randn(8, 75) * scale)
        assert out.shape == (8, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert (out.norm(dim=-1) < 1 / np.sqrt(C)).all()
    assert len(dict(enc.state_dict())) == len({id(t) for t in enc.state_dict().values()})  # no shared tensors


def test_encoder_spreads_distinct_inputs_apart() -> None:
    """Different inputs land at different points (the net does not collapse onto the origin)."""
    torch.manual_seed(0)
    enc = HyperbolicEncoder(75, 64, 32)
    out = enc(torch.rand(6, 75))
    d = pairwise_distance(out, out, enc.ball)
    off_diagonal = d[~torch.eye(6, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()
    torch.testing.assert_close(d.diagonal(), torch.zeros(6), atol=1e-3, rtol=0)


def test_gradients_finite_including_zero_distance_and_learnable_curvature() -> None:
    torch.manual_seed(0)
    enc = HyperbolicEncoder(10, 16, 8, learnable_curvature=True)
    x = torch.randn(5, 10, requires_grad=True)
    out = enc(x)
    loss = pairwise_distance(out, out, enc.ball).sum()  # includes x == y on the diagonal
    loss.backward()
    grads = [x.grad] + [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert enc.ball.isp_c.grad.abs().item() > 0
    assert enc.fc1.weight.grad.abs().sum() > 0 and enc.fc2.bias.grad.abs().sum() > 0


def test_encoder_ignores_autocast() -> None:
    torch.manual_seed(0)
    enc = HyperbolicEncoder(10, 16, 8)
    x = torch.randn(4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = enc(x)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, enc(x))
