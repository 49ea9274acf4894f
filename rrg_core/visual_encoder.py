"""Visual encoder: a ResNet (transformers' implementation, so no torchvision) turning one or
two views of a study into patch tokens for MPSA and a pooled vector for the diagnosis head.

The tokens sit at half the backbone's stride (a feature pyramid): the last stage,
upsampled, plus a projection of the stage before it (an FPN top-down step), so each token
keeps the deep stage's context and the heatmaps get a grid fine enough for small findings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ResNetConfig, ResNetModel

from .config import REVTAFConfig


@dataclass
class VisualFeatures:
    """The image side's output. The token axis holds the views one after the other, frontal
    first, each as its h x w grid row by row: the one place that layout is spelled out is
    :meth:`view` and :meth:`coarsen` (MPSA maps over tokens share it)."""

    tokens: Tensor  # [B, V * h * w, d_model]
    pooled: Tensor  # [B, d_model], mean over views of each view's mean token
    grid: tuple[int, int]  # (h, w) of one view's token grid
    n_views: int

    def view(self, v: int) -> slice:
        """The token-axis positions of view ``v`` (0: frontal), for tokens or maps over them."""
        n = self.grid[0] * self.grid[1]
        return slice(v * n, (v + 1) * n)

    def coarsen(self, tokens: Tensor) -> Tensor:
        """[B, V * h * w, D] -> [B, V * ceil(h/2) * ceil(w/2), D], each view's grid averaged over 2 x 2."""
        b, _, d = tokens.shape
        maps = tokens.reshape(b * self.n_views, self.grid[0], self.grid[1], d).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(maps, 2, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2).reshape(b, -1, d)


class VisualEncoder(nn.Module):
    def __init__(self, config: REVTAFConfig, saved: Path | None = None) -> None:
        """``saved``: where a saved model keeps its Hub backbone's config (see :mod:`rrg_core.model`)."""
        super().__init__()
        if config.vision.hub_id and saved is not None:  # a saved model: the architecture, no download
            self.backbone = ResNetModel(ResNetConfig.from_pretrained(saved))
        elif config.vision.hub_id:
            # Pretrained backbones are RGB: grayscale X-rays are repeated over 3 channels.
            self.backbone = ResNetModel.from_pretrained(config.vision.hub_id)
        else:
            self.backbone = ResNetModel(
                ResNetConfig(
                    num_channels=1,
                    embedding_size=config.vision.embedding_size,
                    hidden_sizes=list(config.vision.hidden_sizes),
                    depths=list(config.vision.depths),
                    layer_type=config.vision.layer_type,
                )
            )
        self.in_channels = self.backbone.config.num_channels
        width = self.backbone.config.hidden_sizes[-1]
        self.project = nn.Sequential(nn.Linear(width, config.d_model), nn.LayerNorm(config.d_model))
        if len(self.backbone.config.hidden_sizes) < 2:
            raise ValueError("the feature pyramid needs a backbone with at least two stages")
        self.lateral = nn.Linear(self.backbone.config.hidden_sizes[-2], config.d_model)
        # Which view a token came from (frontal/lateral), added after projection.
        self.view_embedding = nn.Parameter(torch.zeros(config.vision.n_views, config.d_model))
        # A learned 2-D position code on the token grid helps the decoder say "left"/"right".
        side = config.vision.image_size // self.stride
        self.position_embedding = nn.Parameter(torch.zeros(side * side, config.d_model))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.n_views = config.vision.n_views
        self.image_size = config.vision.image_size

    @property
    def stride(self) -> int:
        # stem: conv stride 2 + max-pool stride 2; every stage after the first halves again; the
        # pyramid's tokens sit at half the deepest stage's stride
        return 2 * 2 ** (len(self.backbone.config.hidden_sizes) - 1)

    def forward(self, images: Tensor) -> VisualFeatures:
        """images: [B, V, 1, H, W], normalised (see :func:`rrg_core.preprocessing.prepare_image`)."""
        size = self.image_size
        if images.dim() != 5 or images.shape[1:] != (self.n_views, 1, size, size):
            raise ValueError(f"expected images of shape [B, {self.n_views}, 1, {size}, {size}], got {tuple(images.shape)}")
        b, v, _, h, w = images.shape
        flat = images.reshape(b * v, 1, h, w)
        if self.in_channels != 1:
            flat = flat.expand(-1, self.in_channels, -1, -1)
        features = self.backbone(flat, output_hidden_states=True)
        linear, norm = self.project
        deep = linear(features.last_hidden_state.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B*V, D, h, w]
        finer = features.hidden_states[-2]  # the stage before the last, twice the resolution
        upsampled = upsample_on_lattice(deep, finer.shape[-2:])
        tokens = upsampled.permute(0, 2, 3, 1) + self.lateral(finer.permute(0, 2, 3, 1))
        gh, gw = tokens.shape[1:3]
        tokens = norm(tokens.flatten(1, 2))  # [B*V, h'w', D]
        tokens = (tokens + self.position_embedding).reshape(b, v, gh * gw, -1) + self.view_embedding[None, :, None, :]
        pooled = tokens.mean(dim=2).mean(dim=1)
        return VisualFeatures(tokens=tokens.reshape(b, v * gh * gw, -1), pooled=pooled, grid=(gh, gw), n_views=v)


def upsample_on_lattice(deep: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, D, h, w] -> [N, D, *size] (size at most 2h x 2w), doubling the grid so that deep token n
    stays on fine token 2n: both are centred on the same input pixel (strided layers pad
    symmetrically, see :func:`rrg_core.preprocessing.upsample_maps`), so fine token i reads the
    deep grid at i / 2, bilinearly, clamped at the far border."""
    h, w = deep.shape[-2:]
    padded = F.pad(deep, (0, 1, 0, 1), mode="replicate")
    doubled = F.interpolate(padded, size=(2 * h + 1, 2 * w + 1), mode="bilinear", align_corners=True)
    return doubled[..., : size[0], : size[1]]

