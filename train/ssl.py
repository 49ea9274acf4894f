"""SimCLR's pieces for self-supervised encoder pretraining: a projection head and the NT-Xent loss.

SimCLR rather than BYOL or MAE: NT-Xent is one function of a batch, checkable against a plain
reference, and needs no second network (BYOL's momentum target costs an extra forward pass per
view, which this 2-core CPU cannot spare). MAE masks patches of a vision transformer; our encoder
is a ResNet. The price is SimCLR's appetite for negatives: a batch of 32 studies gives each view
62 negatives, far fewer than the thousands it was designed around.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROJECTION_DIM = 64


def projection_head(d_model: int, out_dim: int = PROJECTION_DIM) -> nn.Sequential:
    """The MLP between the pooled vector and the loss (SimCLR's g): the loss shapes its output, so the
    pooled vector below keeps what the augmentations vary, which a downstream probe may need."""
    return nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, out_dim))


def nt_xent(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross-entropy of two views of the same B items ([B, D] each): every one
    of the 2B embeddings must pick its partner among the other 2B - 1 by cosine similarity / T."""
    if first.shape != second.shape or first.dim() != 2 or len(first) < 2:
        raise ValueError(f"nt_xent needs two [B, D] batches with B >= 2, got {tuple(first.shape)} and {tuple(second.shape)}")
    z = F.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # an embedding is never its own candidate
    n = len(first)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(similarity, partner)
