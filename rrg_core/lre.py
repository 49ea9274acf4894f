"""LRE, the Learnable Retrieval Enhancer.

A per-image score vector (one score per region/entity prompt, read from the MPSA alignment
between patches and prompts) is mapped into the Poincare ball by a small hyperbolic network.
Training ranks, inside each batch, the neighbour with the closest label states first; at
inference the nearest training studies by hyperbolic distance are retrieved from a
:class:`~rrg_core.reference_index.ReferenceIndex`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import REVTAFConfig
from .hyperbolic import HyperbolicEncoder, pairwise_distance
from .observations import State


class EntityScores(nn.Module):
    """Region/entity scores from the patch-prompt alignment [B, K, P] (MPSA's q.k, per patch).

    Pooling is a log-sum-exp over patches minus log P: the mean for a flat alignment, the
    maximum once one place stands out. Mean-like at first, it trains like a linear classifier
    of the pooled image (a max would only move the best-matching, usually normal, patch); the
    per-patch alignment then acts as a class activation map, which MPSA's maps follow. The
    result is a logit per prompt; the finding prompts' logits are supervised by the labels.
    """

    def __init__(self, n_prompts: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_prompts))
        self.bias = nn.Parameter(torch.zeros(n_prompts))

    def forward(self, alignment: Tensor) -> Tensor:
        pooled = torch.logsumexp(alignment, dim=-1) - math.log(alignment.shape[-1])
        return self.scale * pooled + self.bias


def entity_loss(entity_logits: Tensor, states: Tensor) -> Tensor:
    """BCE of the finding-prompt scores against 'observation is positive' (uncertain counts half).

    entity_logits [B, K] with the first F columns being the finding prompts in OBSERVATIONS
    order; states [B, 14]."""
    n_findings = min(entity_logits.shape[1], states.shape[1])
    findings = states[:, :n_findings]
    target = (findings == State.POSITIVE).float() + 0.5 * (findings == State.UNCERTAIN).float()
    return F.binary_cross_entropy_with_logits(entity_logits[:, :n_findings], target)


def hamming_targets(states: Tensor) -> Tensor:
    """For each sample, a distribution over the *other* batch samples that puts equal mass on
    those whose one-hot label-state vector is nearest in Hamming distance. [B, B]."""
    differing = (states[:, None, :] != states[None, :, :]).sum(-1).float()  # Hamming distance / 2 of one-hots
    differing.fill_diagonal_(float("inf"))
    nearest = differing == differing.min(dim=1, keepdim=True).values
    return nearest.float() / nearest.float().sum(dim=1, keepdim=True)


class LearnableRetrievalEnhancer(nn.Module):
    def __init__(self, config: REVTAFConfig) -> None:
        super().__init__()
        # Scores enter as layer-normalised logits: sigmoid probabilities saturate as soon as
        # the entity loss is learnt, and then no ranking gradient reaches the scores.
        self.normalize = nn.LayerNorm(len(config.prompts))
        self.encoder = HyperbolicEncoder(
            len(config.prompts),
            config.hyperbolic_hidden,
            config.hyperbolic_dim,
            curvature=config.curvature,
            learnable_curvature=config.learnable_curvature,
        )

    @property
    def ball(self):
        return self.encoder.ball

    def forward(self, entity_logits: Tensor) -> Tensor:
        """[B, K] entity logits -> [B, H] points on the Poincare ball."""
        return self.encoder(self.normalize(entity_logits))

    def ranking_loss(self, embeddings: Tensor, states: Tensor) -> Tensor:
        """Cross-entropy over negative hyperbolic distances to the other batch samples, with the
        nearest-label neighbour(s) as the target (DESIGN.md section 2, item 3)."""
        if embeddings.shape[0] < 2:
            return embeddings.sum() * 0.0
        logits = -pairwise_distance(embeddings, embeddings, self.ball)
        logits = logits.masked_fill(torch.eye(len(logits), dtype=torch.bool, device=logits.device), float("-inf"))
        target = hamming_targets(states)
        return -(target * F.log_softmax(logits, dim=1).masked_fill(target == 0, 0.0)).sum(1).mean()
