"""From an X-ray's pixels to the model's input tensor, and from token-grid maps back to the image."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .config import REVTAFConfig


def prepare_image(pixels: np.ndarray, size: int, mean: float = 0.5, std: float = 0.25) -> Tensor:
    """float H x W in [0, 1] (display polarity) -> normalised [1, size, size] float32 tensor.

    A plain square resize (as R2Gen and PromptMRG do), so a map on the token grid goes back
    to the original image by the inverse resize alone."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((image[0] - mean) / std).float()


def prepare_study(views: Sequence[object], config: REVTAFConfig) -> Tensor:
    """One study's views (XRay objects or float H x W arrays) -> [V, 1, S, S], frontal first. A
    one-view study given to a two-view model repeats its view (the model then reads it twice)."""
    arrays = [getattr(v, "pixels", v) for v in views]
    if not 1 <= len(arrays) <= 2:
        raise ValueError(f"a study has 1 or 2 views, got {len(arrays)}")
    vision = config.vision
    if len(arrays) < vision.n_views:
        arrays = arrays * vision.n_views
    return torch.stack([prepare_image(a, vision.image_size, vision.image_mean, vision.image_std)
                        for a in arrays[: vision.n_views]])


# Heatmaps are upsampled to at most this many pixels on the long side: a full-size radiograph's 35
# maps at its own resolution take about a GB, and nothing shows them larger (the CLI and the demo).
MAX_MAP_SIDE = 1024


def upsample_maps(maps: Tensor, grid: tuple[int, int], size: tuple[int, int], input_size: int) -> np.ndarray:
    """[..., h*w] maps on the token grid -> float32 [..., H, W] at image resolution, each summing to 1.

    A ResNet's strided layers pad symmetrically, so token i of a stride-s grid is centred on
    input pixel s * i, not on the middle of its cell (s * i + s/2, where a plain resize would put
    it): half a token up and left, 10-20 pixels on a full-size radiograph. The maps are sampled
    bilinearly at each output pixel's position on that token lattice (clamped at the border),
    one axis at a time, so nothing larger than the output is ever built."""
    lead = maps.shape[:-1]
    grid_maps = maps.reshape(-1, *grid).float()
    rows, cols = (_lattice_weights(n_out, n_tokens, input_size).to(grid_maps.device)
                  for n_out, n_tokens in zip(size, grid))
    full = (rows @ grid_maps @ cols.T).clamp(min=0)
    full = full / full.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    return full.reshape(*lead, *size).cpu().numpy()


def _lattice_weights(n_out: int, n_tokens: int, input_size: int) -> Tensor:
    """[n_out, n_tokens] bilinear weights of the tokens (centred on input pixels s * i) at each
    output pixel's centre."""
    centres = (torch.arange(n_out, dtype=torch.float32) + 0.5) * input_size / n_out  # in input pixels
    index = ((centres - 0.5) / (input_size / n_tokens)).clamp(0, n_tokens - 1)  # fractional token index
    low = index.floor().long()
    high = (low + 1).clamp(max=n_tokens - 1)
    weights = torch.zeros(n_out, n_tokens)
    weights[torch.arange(n_out), low] += 1 - (index - low)
    weights[torch.arange(n_out), high] += index - low
    return weights
