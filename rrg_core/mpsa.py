"""Multi-Prompt Sinkhorn Attention (MPSA), the alignment-and-fusion block of FVTAF.

Image patch tokens attend to a set of text prompts (region/entity embeddings, or the
sentences of the retrieved reference report). Instead of a softmax per patch, the
attention matrix is the entropic optimal-transport plan between patches and prompts
with uniform marginals: every patch spends the same mass and every prompt receives the
same mass, so no prompt can be ignored and no patch can hog the text. ``mode="softmax"``
is plain cross-attention, the ablation of the paper's supplementary Table 3.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sinkhorn import log_sinkhorn

MODES = ("sinkhorn", "softmax")


class MPSAOutput(NamedTuple):
    fused: Tensor  # [B, P, D] patch tokens enriched with the prompts
    maps: Tensor  # [B, K, P] each prompt's attention over the patches, sums to 1 (0 for masked prompts)
    similarity: Tensor  # [B, K, P] head-averaged cosine of prompt and patch, in [-1, 1]


class MultiPromptSinkhornAttention(nn.Module):
    """Cross-attention from patch tokens to prompts with an optimal-transport attention matrix.

    Per head: q = W_q tokens, k = W_k prompts, v = W_v prompts. In ``"sinkhorn"`` mode the
    cost is 1 - cos(q_p, k_k) and the plan over (patches x valid prompts) weights the values
    (each patch row rescaled to sum to 1); in ``"softmax"`` mode the weights are the usual
    scaled dot-product softmax over the valid prompts. Then
    ``fused = LayerNorm(tokens + dropout(W_o attn_out))``.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int = 8,
        epsilon: float = 0.05,
        max_iter: int = 100,
        tol: float = 1e-2,
        mode: str = "sinkhorn",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.n_heads, self.epsilon, self.max_iter, self.tol, self.mode = n_heads, epsilon, max_iter, tol, mode
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, prompts: Tensor, prompt_mask: Tensor | None = None) -> MPSAOutput:
        """``tokens`` [B, P, D], ``prompts`` [B, K, D], ``prompt_mask`` [B, K] bool (True = real prompt)."""
        n_patches = tokens.shape[1]
        if prompt_mask is None:
            prompt_mask = torch.ones(prompts.shape[:2], dtype=torch.bool, device=prompts.device)
        cols = prompt_mask.bool().unsqueeze(1)  # [B, 1, K], broadcast over heads
        q, k, v = self._split(self.q_proj(tokens)), self._split(self.k_proj(prompts)), self._split(self.v_proj(prompts))
        cosine = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)  # [B, H, P, K]

        if self.mode == "sinkhorn":
            plan = log_sinkhorn(1 - cosine, self.epsilon, self.max_iter, self.tol, col_mask=cols).plan
            weights = plan * n_patches  # each patch row sums to 1
            head_maps = plan * prompt_mask.sum(-1).view(-1, 1, 1, 1)  # each prompt column sums to 1
        else:
            # finfo.min rather than -inf: a sample without any prompt gets zero weights, not NaN
            scaled = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            scores = scaled.masked_fill(~cols.unsqueeze(-2), torch.finfo(scaled.dtype).min)
            weights = scores.softmax(-1) * cols.unsqueeze(-2)
            head_maps = weights / weights.sum(-2, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)

        attended = (weights.to(v.dtype) @ v).transpose(1, 2).flatten(2)  # [B, P, D]
        fused = self.norm(tokens + self.dropout(self.out_proj(attended)))
        maps = head_maps.mean(1).transpose(-1, -2)
        return MPSAOutput(fused, maps, cosine.mean(1).transpose(-1, -2))

    def _split(self, x: Tensor) -> Tensor:
        """[B, L, D] -> [B, H, L, D / H]."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)
