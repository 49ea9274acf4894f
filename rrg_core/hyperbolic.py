"""The Poincaré-ball network of the Learnable Retrieval Enhancer (LRE).

REVTAF maps each image's region/entity score vector into a Poincaré ball (curvature
c = 0.01) with a small hyperbolic network (75 -> 512 -> 512) and retrieves reference
reports by hyperbolic distance. The ball's maths (Möbius operations, exp/log maps,
distances, projection back inside the ball) comes from geoopt; this module only
assembles the layers.

geoopt's ``c`` is the magnitude of the (negative) curvature: the ball has radius 1/sqrt(c).
"""
from __future__ import annotations

import math

import geoopt
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_ball(curvature: float = 0.01, learnable: bool = False) -> geoopt.PoincareBall:
    """A Poincaré ball of curvature -``curvature`` (geoopt parametrises c through softplus)."""
    if curvature <= 0:
        raise ValueError(f"curvature must be positive (it is the magnitude c of -c), got {curvature}")
    return geoopt.PoincareBall(c=curvature, learnable=learnable)


class HypLinear(nn.Module):
    """Hyperbolic linear layer: ``(W ⊗_c x) ⊕_c b`` (Ganea et al., 2018).

    The bias is a plain Euclidean parameter in the tangent space at the origin, mapped
    onto the ball with ``expmap0`` at each call. That keeps every parameter Euclidean, so
    plain AdamW (with weight decay) trains it; a ``geoopt.ManifoldParameter`` would need
    a Riemannian optimiser.

    The ball is only *referenced*, not registered as a submodule: its owner (e.g.
    :class:`HyperbolicEncoder`) holds the curvature parameter, so it appears once in the
    state dict (safetensors refuses tensors stored under two names).
    """

    def __init__(self, in_features: int, out_features: int, ball: geoopt.PoincareBall, bias: bool = True) -> None:
        super().__init__()
        object.__setattr__(self, "ball", ball)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, x: Tensor) -> Tensor:
        y = self.ball.mobius_matvec(self.weight, x)
        if self.bias is not None:
            y = self.ball.mobius_add(y, self.ball.expmap0(self.bias))
        return self.ball.projx(y)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, bias={self.bias is not None}"


class HyperbolicEncoder(nn.Module):
    """The LRE's hyperbolic network: expmap0 -> HypLinear -> Möbius ReLU -> HypLinear.

    Always computes in float32 with autocast disabled: near the ball's boundary the
    Möbius maps need more precision than half types give. Every step projects back
    inside the ball, so arbitrarily large inputs give finite points.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        curvature: float = 0.01,
        learnable_curvature: bool = False,
    ) -> None:
        super().__init__()
        self.ball = make_ball(curvature, learnable_curvature)
        self.fc1 = HypLinear(in_dim, hidden_dim, self.ball)
        self.fc2 = HypLinear(hidden_dim, out_dim, self.ball)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, in_dim] Euclidean features -> [B, out_dim] points on the ball (float32)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.ball.expmap0(x.float())
            h = self.fc1(h)
            h = self.ball.mobius_fn_apply(F.relu, h)
            return self.fc2(h)


def pairwise_distance(x: Tensor, y: Tensor, ball: geoopt.PoincareBall) -> Tensor:
    """Poincaré distances between all rows of ``x`` [N, D] and ``y`` [M, D] -> [N, M].

    Uses geoopt's artanh form with broadcasting (memory N*M*D), whose gradient stays
    finite at zero distance, unlike the arcosh form (the LRE batch loss sees x == y).
    """
    return ball.dist(x.unsqueeze(-2), y.unsqueeze(-3))
