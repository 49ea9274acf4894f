"""Contact sheets: grids of phantoms with their mask outlines, for looking at what the generator makes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..observations import OBSERVATIONS
from ..xray_io import to_uint8
from .config import PhantomConfig
from .findings import Finding, random_finding
from .generator import Phantom, make_phantom

_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255)]


def contact_sheet(
    path: str | Path, seed: int = 0, n: int = 16, per_finding: bool = False, config: PhantomConfig | None = None,
    columns: int = 4,
) -> Path:
    """Save a grid of phantoms with mask outlines and their positive labels.

    With `per_finding`, one row per observation instead: the same patient without and
    with a finding of that observation (the last row: No Finding).
    """
    config = config or PhantomConfig()
    if per_finding:
        tiles = []
        for k, observation in enumerate(OBSERVATIONS[:-1]):
            finding = random_finding(observation, np.random.default_rng([seed, k, 1]))
            tiles.append(_tile(make_phantom(seed, k, config, findings=[]), outline=False))
            tiles.append(_tile(make_phantom(seed, k, config, findings=[finding]), caption=_describe(finding)))
        tiles.append(_tile(make_phantom(seed, len(OBSERVATIONS), config, findings=[])))
        columns = 2 * (columns // 2) or 2
    else:
        tiles = [_tile(make_phantom(seed, i, config)) for i in range(n)]
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % columns)
    grid = np.concatenate([np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def _describe(finding: Finding) -> str:
    parts = [finding.observation, finding.severity if finding.observation != "Support Devices" else finding.kind,
             finding.side or "", finding.zone or "", "(hedged)" if finding.certainty < 0 else ""]
    return " ".join(p for p in parts if p)


def _tile(phantom: Phantom, outline: bool = True, caption: str | None = None) -> np.ndarray:
    """RGB image with coloured mask outlines and a caption (default: the positive labels)."""
    rgb = np.repeat(to_uint8(phantom.image)[..., None], 3, axis=2)
    if outline:
        for colour, instances in zip(_COLOURS * 3, phantom.masks.values()):
            for mask in instances:
                rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    if caption is None:
        positive = [o for o, v in phantom.labels.items() if v == 1]
        hedged = [f"?{o}" for o, v in phantom.labels.items() if v == -1]
        caption = ", ".join(positive + hedged)
    image = Image.fromarray(rgb)
    ImageDraw.Draw(image).text((3, image.height - 12), caption[:60], fill=(255, 255, 0))
    return np.asarray(image)
