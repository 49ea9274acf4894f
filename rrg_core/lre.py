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
from .mpsa import MPSAOutput
from .observations import State
from .prompts import N_FINDING_PROMPTS


class EntityScores(nn.Module):
    """Region/entity scores from MPSA's patch-prompt cosines [B, K, P], one logit per prompt.

    The soft maximum over patches of the cosine between patch and prompt,
    ``t * logsumexp(cos / t) - t * log P`` with ``t`` the Sinkhorn temperature, i.e. the same
    kernel that builds MPSA's transport plan: scores and heatmaps read one quantity. A prompt
    scores high where some patch matches it, and the supervision of that score moves the heatmap
    to that patch (multiple-instance learning). The finding prompts' logits are supervised by the
    labels (see :func:`entity_loss`).
    """

    def __init__(self, n_prompts: int, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature
        # cosines live in [-1, 1]: start with logits spanning +-10
        self.scale = nn.Parameter(torch.full((n_prompts,), 10.0))
        self.bias = nn.Parameter(torch.zeros(n_prompts))

    def forward(self, region: MPSAOutput) -> Tensor:
        t = self.temperature
        pooled = t * (torch.logsumexp(region.similarity / t, dim=-1) - math.log(region.similarity.shape[-1]))
        return self.scale * pooled + self.bias


def entity_loss(entity_logits: Tensor, states: Tensor) -> Tensor:
    """BCE of the finding-prompt scores against 'observation is positive' (uncertain counts half).

    entity_logits [B, K] with the first 13 columns being the finding prompts in OBSERVATIONS
    order (No Finding, an absence, has none); states [B, 14]."""
    n_findings = min(entity_logits.shape[1], N_FINDING_PROMPTS)
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
        self.normalize = nn.LayerNorm(len(config.text.prompts))
        self.encoder = HyperbolicEncoder(
            len(config.text.prompts),
            config.lre.hidden,
            config.lre.dim,
            curvature=config.lre.curvature,
        )

    @property
    def ball(self):
        return self.encoder.ball

    def forward(self, entity_logits: Tensor) -> Tensor:
        """[B, K] entity logits -> [B, H] points on the Poincare ball.

        The scores are detached: as with REVTAF's frozen MedKLIP, the ranking loss trains the
        hyperbolic network only, and the image encoder learns from the labels, not from the
        batch-dependent ranking targets."""
        return self.encoder(self.normalize(entity_logits.detach()))

    def ranking_loss(self, embeddings: Tensor, states: Tensor) -> Tensor:
        """Cross-entropy over negative hyperbolic distances to the other batch samples, with the
        nearest-label neighbour(s) as the target: the ranking objective of the REVTAF paper's LRE
        (ICCV 2025, cited at the top of the README)."""
        if embeddings.shape[0] < 2:
            return embeddings.sum() * 0.0
        logits = -pairwise_distance(embeddings, embeddings, self.ball)
        logits = logits.masked_fill(torch.eye(len(logits), dtype=torch.bool, device=logits.device), float("-inf"))
        target = hamming_targets(states)
        return -(target * F.log_softmax(logits, dim=1).masked_fill(target == 0, 0.0)).sum(1).mean()
