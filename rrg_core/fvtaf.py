"""FVTAF: Fine-grained Visual-Text Alignment and Fusion.

MPSA runs twice over the image patch tokens: against the fixed region/entity prompts and
against the sentences of the retrieved report (the global reference prompt). Both fused
token sets, concatenated, are the decoder's cross-attention memory (see ``REVTAF._memory``).
A consistency loss ties the two sets of attention maps together in proportion to how similar
their texts are.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import REVTAFConfig
from .mpsa import MPSAOutput, MultiPromptSinkhornAttention


def soft_iou(a: Tensor, b: Tensor) -> Tensor:
    """Differentiable IoU of non-negative maps, each scaled to a maximum of 1.

    a [B, K, P], b [B, S, P] -> [B, K, S] = sum(min) / sum(max). The authors binarise the maps
    at 0.5 before the IoU, which has zero gradient with respect to the maps; this soft
    (Ruzicka) form equals the IoU on binary maps and has a useful gradient elsewhere."""
    a = a / a.amax(dim=-1, keepdim=True).clamp(min=1e-8)
    b = b / b.amax(dim=-1, keepdim=True).clamp(min=1e-8)
    intersection = torch.minimum(a[:, :, None, :], b[:, None, :, :]).sum(-1)
    union = torch.maximum(a[:, :, None, :], b[:, None, :, :]).sum(-1)
    return intersection / union.clamp(min=1e-8)


def consistency_loss(
    region_maps: Tensor, global_maps: Tensor, region_text: Tensor, global_text: Tensor, global_mask: Tensor
) -> Tensor:
    """Region and global maps should overlap in proportion to sigmoid(cosine) of their texts.

    We regress the soft IoU onto that target (squared error) rather than maximising the
    similarity-weighted IoU: the weighted sum is minimised by making every map uniform,
    which would erase the localisation the heatmaps exist to show.
    region_maps [B, K, P], global_maps [B, S, P], region_text [B, K, D], global_text [B, S, D],
    global_mask [B, S] (True = a real sentence)."""
    iou = soft_iou(region_maps, global_maps)
    cosine = nn.functional.normalize(region_text, dim=-1) @ nn.functional.normalize(global_text, dim=-1).transpose(1, 2)
    target = torch.sigmoid(cosine)
    weight = global_mask[:, None, :].to(iou.dtype).expand_as(iou)
    return ((iou - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


class FVTAF(nn.Module):
    def __init__(self, config: REVTAFConfig) -> None:
        super().__init__()
        mode = "sinkhorn" if config.fvtaf.mpsa else "softmax"
        kwargs = dict(
            n_heads=config.n_heads,
            epsilon=config.fvtaf.sinkhorn_epsilon,
            max_iter=config.fvtaf.sinkhorn_iters,
            tol=config.fvtaf.sinkhorn_tol,
            mode=mode,
            dropout=config.dropout,
        )
        # The region alignment also feeds the LRE's entity scores, so it exists whenever LRE
        # or FVTAF is on; the global branch and the fusion only with FVTAF.
        self.region_attention = MultiPromptSinkhornAttention(config.d_model, **kwargs)
        self.global_attention = MultiPromptSinkhornAttention(config.d_model, **kwargs) if config.fvtaf.enabled else None

    @property
    def fuses(self) -> bool:
        return self.global_attention is not None

    def align_regions(self, tokens: Tensor, prompts: Tensor) -> MPSAOutput:
        """tokens [B, P, D], prompts [B, K, D]."""
        return self.region_attention(tokens, prompts)

    def align_global(self, tokens: Tensor, sentences: Tensor, mask: Tensor) -> MPSAOutput:
        """tokens [B, P, D], sentences of the retrieved report [B, S, D] with mask [B, S]."""
        if self.global_attention is None:
            raise RuntimeError("FVTAF is switched off (fvtaf.enabled false): there is no global branch")
        return self.global_attention(tokens, sentences, mask)
