"""Vectorised drawing helpers shared by the anatomy, finding and device renderers.

Everything is drawn in *patient coordinates*: x runs from the image's left edge (-1,
the patient's right side, radiological convention) to its right edge (+1, patient's
left), y from the top (-1) down (+1). A :class:`Pose` maps them to pixels, so the
patient can be shifted, tilted or magnified without any renderer knowing.

Speed matters (a training loader renders phantoms on the fly): shapes are closed-form
fields over precomputed grids, thin lines are splatted with ``np.bincount``, and noise
comes from a fixed bank sliced at random offsets instead of being drawn per image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

Array = np.ndarray


@lru_cache(maxsize=8)
def _image_grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), read-only and shared."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    x, y = np.meshgrid(axis, axis)
    x.flags.writeable = y.flags.writeable = False
    return x, y


@dataclass(frozen=True)
class Pose:
    """Where the patient lies in the image: tilt (radians), magnification and shift."""

    size: int
    tilt: float = 0.0
    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def pixel(self) -> float:
        """The side of one pixel in patient units (edge widths are given in pixels)."""
        return 2.0 / (self.size * self.zoom)

    def grids(self) -> tuple[Array, Array]:
        """Patient coordinates (X, Y) of every pixel centre."""
        x, y = _image_grid(self.size)
        c, s = math.cos(self.tilt) / self.zoom, math.sin(self.tilt) / self.zoom
        return c * x + s * y - self.shift[0], c * y - s * x - self.shift[1]

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """The image window (rows, cols) holding every pixel of the patient rectangle [x0, x1] x [y0, y1].

        Parts that live in one region (a lung, a clavicle, the airways) are computed on
        their window only: most of the renderer's speed comes from here.
        """
        rows, cols = self.to_pixels(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))

        def span(values: Array) -> slice:
            lo, hi = math.floor(values.min()) - 1, math.ceil(values.max()) + 2
            return slice(min(max(lo, 0), self.size), min(max(hi, 0), self.size))

        return span(rows), span(cols)

    def to_pixels(self, X: Array, Y: Array) -> tuple[Array, Array]:
        """(row, col) pixel positions of patient points: the inverse of :meth:`grids`."""
        u, v = np.asarray(X) + self.shift[0], np.asarray(Y) + self.shift[1]
        c, s = math.cos(self.tilt) * self.zoom, math.sin(self.tilt) * self.zoom
        half = self.size / 2.0
        return (s * u + c * v + 1.0) * half - 0.5, (c * u - s * v + 1.0) * half - 0.5


def ramp(distance: Array, width: float) -> Array:
    """Anti-aliased inside test: 1 well inside (distance > 0 inside), 0 outside, linear over `width`."""
    out = distance * (1.0 / width) + 0.5
    return np.minimum(np.maximum(out, 0.0, out=out), 1.0, out=out)


def norm(dx: Array, dy: Array) -> Array:
    """Euclidean length, several times faster than np.hypot (no overflow care needed here)."""
    return np.sqrt(dx * dx + dy * dy)


def segment_distance(X: Array, Y: Array, start: tuple[float, float], end: tuple[float, float]) -> Array:
    """Distance of every point to the segment start-end."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) * (1.0 / max(dx * dx + dy * dy, 1e-12)), 0.0, 1.0)
    return norm(X - x0 - t * dx, Y - y0 - t * dy)


def bone_profile(t: Array, hollow: float = 0.6) -> Array:
    """Projected density across a tubular bone, t in [0, 1] from edge to edge.

    A hollow cylinder: the cortex is crossed tangentially at the margins, so the edges
    look brighter than the marrow, as ribs and clavicles do on a radiograph.
    """
    u = np.maximum(4.0 * t * (1.0 - t), 0.0)  # 1 in the middle, 0 at the edges
    return np.sqrt(u) * (1.0 - hollow * u * u)


def splat(shape: tuple[int, int], rows: Array, cols: Array, weights: Array | float = 1.0) -> Array:
    """Deposit weighted points on their nearest pixels: the cheap way to draw thousands of
    thin-line samples (callers :func:`soften` the result, which also hides the aliasing)."""
    h, w = shape
    r, c = np.rint(np.ravel(rows)).astype(np.int64), np.rint(np.ravel(cols)).astype(np.int64)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), r.shape)
    ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    return np.bincount(r[ok] * w + c[ok], weights[ok], minlength=h * w).reshape(shape).astype(np.float32)


def soften(image: Array) -> Array:
    """[1, 2, 1] smoothing along both axes: turns splatted points into a 2-3 px wide line."""
    out = image.copy()
    out[1:-1] = 0.5 * image[1:-1] + 0.25 * (image[:-2] + image[2:])
    tmp = out.copy()
    out[:, 1:-1] = 0.5 * tmp[:, 1:-1] + 0.25 * (tmp[:, :-2] + tmp[:, 2:])
    return out


def sample_polyline(points: Array, step: float) -> Array:
    """Points every `step` along a polyline given as an (N, 2) array of (x, y)."""
    points = np.asarray(points, dtype=np.float64)
    seg = norm(*np.diff(points, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(seg)])
    at = np.arange(0.0, along[-1] + 1e-9, step)
    return np.stack([np.interp(at, along, points[:, 0]), np.interp(at, along, points[:, 1])], axis=1)


def bezier(*control: tuple[float, float], n: int = 64) -> Array:
    """A Bezier curve from the given control points, as (n, 2) points (tubes, lines, leads)."""
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    pts = np.broadcast_to(np.asarray(control, dtype=np.float64), (n, len(control), 2))
    while pts.shape[1] > 1:  # de Casteljau
        pts = pts[:, :-1] * (1.0 - t) + pts[:, 1:] * t
    return pts[:, 0]


def draw_curves(pose: Pose, curves: Sequence[Array], width_px: float = 1.0) -> Array:
    """Smooth lines of roughly `width_px` pixels along patient-space polylines, peak value ~1."""
    dense = np.concatenate([sample_polyline(c, 0.35 * pose.pixel) for c in curves])
    rows, cols = pose.to_pixels(dense[:, 0], dense[:, 1])
    line = splat((pose.size, pose.size), rows, cols, 0.35)
    margin = 3 + round(width_px)  # smoothing only reaches this far from the points
    window = (
        slice(max(0, int(rows.min()) - margin), max(0, int(rows.max()) + margin + 1)),
        slice(max(0, int(cols.min()) - margin), max(0, int(cols.max()) + margin + 1)),
    )
    part = line[window]
    for _ in range(max(1, round(width_px))):
        part = soften(part)
    line[window] = part * (1.0 + 0.5 * max(0.0, width_px - 1.0))
    return line


@lru_cache(maxsize=4)
def noise_bank(size: int) -> tuple[Array, Array, Array]:
    """Fixed fine, medium and coarse noise fields of twice the image size (unit std).

    Slicing them at per-image offsets gives independent-looking grain and texture at the
    cost of a view, and keeps every phantom a pure function of its (seed, index).
    """
    rng = np.random.default_rng(0x5EED)
    white = rng.standard_normal((2 * size, 2 * size)).astype(np.float32)
    fields = [white]
    for sigma in (size / 128.0, size / 24.0):
        smooth = ndimage.gaussian_filter(white, sigma, mode="wrap")
        fields.append((smooth / smooth.std()).astype(np.float32))
    for f in fields:
        f.flags.writeable = False
    return fields[0], fields[1], fields[2]


def noise_slice(bank: Array, offset: tuple[int, int], size: int) -> Array:
    """A size x size window of a noise bank field."""
    r, c = offset
    return bank[r : r + size, c : c + size]


# 5 x 7 bitmaps of the side-marker letters (lead letters on the cassette).
_LETTERS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def letter(char: str, scale: int) -> Array:
    """A block letter as a float mask, each bitmap cell scale x scale pixels."""
    bits = np.array([[c == "1" for c in row] for row in _LETTERS[char]], dtype=np.float32)
    return np.kron(bits, np.ones((scale, scale), dtype=np.float32))
