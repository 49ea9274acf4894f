"""Mask-supervised heatmaps: an optional loss for training data with finding masks (SynthCXR).

Not part of REVTAF: the paper's MPSA maps are emergent, shaped only by the labels and the
text. Supervised that way, a map peaks where a finding is easiest to tell apart, often its
border (the heart's lower edge for cardiomegaly), or nowhere near a finding too thin to be
detected (lines, rib fractures). Where masks exist (our phantoms; box-annotated radiographs
such as MS-CXR), ``grounding_weight`` asks each present finding's region map to put its mass
on the finding: -log of the map's mass on the tokens the mask covers, each token counted in
proportion to its coverage (relative to the best-covered token, so a thin line's best
tokens count fully).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .observations import State


def token_coverage(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """[B, F, H, W] masks at input resolution -> [B, F, h * w]: the share of each token's cell
    that the mask covers. Token i of a stride-s grid is centred on input pixel s * i (see
    :func:`rrg_core.preprocessing.upsample_maps`), so its cell spans [s * i - s/2, s * i + s/2)."""
    b, f, height, width = masks.shape
    h, w = grid
    sh, sw = height // h, width // w
    padded = F.pad(masks.reshape(b * f, 1, height, width), (sw // 2, sw, sh // 2, sh))
    cover = F.avg_pool2d(padded, (sh, sw))[..., :h, :w]
    return cover.reshape(b, f, h * w)


def grounding_loss(maps: Tensor, masks: Tensor, states: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean over (study, finding) pairs with the finding present (positive or uncertain) and
    masked of -log(the map's mass on the mask).

    maps [B, K, h * w]: the frontal view's part of the region MPSA maps (each whole map sums to
    1), the finding prompts first (in OBSERVATIONS order); masks [B, F, H, W] the frontal view's
    finding masks at input resolution; states [B, 14]."""
    n = masks.shape[1]
    cover = token_coverage(masks.to(maps.dtype), grid)
    peak = cover.amax(-1)
    findings = states[:, :n]
    present = ((findings == State.POSITIVE) | (findings == State.UNCERTAIN)) & (peak > 0)
    if not present.any():
        return maps.sum() * 0.0
    weight = cover / peak.clamp_min(1e-8)[..., None]
    mass = (maps[:, :n] * weight).sum(-1)
    return -mass[present].clamp_min(1e-6).log().mean()
