"""Synthetic non-radiographs: what people upload by mistake, made procedurally so that nothing
has to be downloaded or shipped.

Each kind draws an RGB picture from a seeded generator: documents (rendered text, tables),
charts, natural-image-like scenes and textures (1/f noise), shapes, and other medical images
(CT-like slices, fundus photographs, histology). ``gray=True`` removes the colour, so that a
check cannot lean on colour alone. The input gate is fitted on one seed of these and measured
on another (and on real images found at run time, ``benchmarks/bench_gate.py``).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .xray_io import XRay, read_xray

WORDS = (
    "invoice", "total", "amount", "due", "date", "patient", "name", "account", "number", "payment", "terms", "item",
    "quantity", "price", "tax", "the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from",
    "report", "summary", "page", "table", "figure", "results", "method",
)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    side = int(rng.integers(224, 513))
    return side, int(side * rng.uniform(0.7, 1.45))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def pink_noise(rng: np.random.Generator, shape: tuple[int, int], exponent: float = 2.0) -> np.ndarray:
    """A natural-image-like random field (power spectrum 1/f^exponent), scaled to [0, 1]."""
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(shape)) ** (exponent / 2)
    spectrum = amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape))
    field = np.fft.irfft2(spectrum, s=shape)
    return (field - field.min()) / max(np.ptp(field), 1e-9)


def document(rng: np.random.Generator) -> Image.Image:
    """A scanned page: lines of text, sometimes a table and a coloured header."""
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), _colour(rng, 225, 256))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(9, 22))
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(8, 40))
    if rng.random() < 0.5:
        draw.rectangle([0, 0, w, y + size], fill=_colour(rng, 0, 200))
        y += 2 * size
    while y < h - size:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 12))))
        draw.text((int(rng.integers(5, 40)), y), line, fill=_colour(rng, 0, 80), font=font)
        if rng.random() < 0.15:
            draw.line([(5, y + size + 2), (w - 5, y + size + 2)], fill=(0, 0, 0), width=1)
        y += int(size * rng.uniform(1.2, 2.0))
    return img


def chart(rng: np.random.Generator) -> Image.Image:
    """A plot: axes, grid lines and a few coloured curves or bars on white."""
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, bottom = int(0.12 * w), int(0.88 * h)
    draw.line([(left, 10), (left, bottom), (w - 10, bottom)], fill=(0, 0, 0), width=2)
    for _ in range(int(rng.integers(1, 5))):
        xs = np.linspace(left, w - 10, 50)
        ys = bottom - (0.1 + 0.7 * np.abs(np.cumsum(rng.normal(0, 1, 50))) / 10 % 1) * (bottom - 10)
        if rng.random() < 0.3:
            for x, y in zip(xs[::6], ys[::6]):
                draw.rectangle([x, y, x + 8, bottom], fill=_colour(rng))
        else:
            draw.line(list(zip(xs, ys)), fill=_colour(rng), width=2)
    return img


def scene(rng: np.random.Generator) -> Image.Image:
    """An outdoor-photo-like picture: sky gradient, textured ground, a few blobs."""
    w, h = _size(rng)
    rows = np.linspace(0, 1, h)[:, None, None]
    sky = np.array(_colour(rng, 90, 256)) * (1 - 0.4 * rows)
    ground = np.array(_colour(rng, 20, 180)) * (0.5 + pink_noise(rng, (h, w))[..., None])
    horizon = int(h * rng.uniform(0.3, 0.7))
    picture = np.where(np.arange(h)[:, None, None] < horizon, sky, ground)
    img = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, w // 4))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    return img


def texture(rng: np.random.Generator) -> Image.Image:
    """A 1/f texture in random colours (bark, clouds, fabric, stone)."""
    w, h = _size(rng)
    field = pink_noise(rng, (h, w), rng.uniform(1.0, 3.0))[..., None]
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray((a * field + b * (1 - field)).astype(np.uint8))


def shapes(rng: np.random.Generator) -> Image.Image:
    """Random filled ellipses, rectangles and polygons on a plain background."""
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 15))):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        corners = [x0, y0, x1, y1]
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(corners, fill=_colour(rng))
        elif kind == 1:
            draw.rectangle(corners, fill=_colour(rng))
        else:
            draw.polygon([(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(5)], fill=_colour(rng))
    return img


def ct_slice(rng: np.random.Generator) -> Image.Image:
    """A CT-like axial slice: an elliptical body on black with organs and a bright spine."""
    side = int(rng.integers(256, 513))
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    c, rx, ry = side / 2, side * rng.uniform(0.35, 0.47), side * rng.uniform(0.25, 0.4)
    draw.ellipse([c - rx, c - ry, c + rx, c + ry], fill=int(rng.integers(90, 140)))
    for _ in range(int(rng.integers(3, 8))):
        x, y = c + rng.uniform(-0.6, 0.6) * rx, c + rng.uniform(-0.6, 0.6) * ry
        r = side * rng.uniform(0.03, 0.15)
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r], fill=int(rng.integers(20, 200)))
    draw.ellipse([c - 0.06 * side, c + 0.6 * ry - 0.06 * side, c + 0.06 * side, c + 0.6 * ry + 0.06 * side], fill=245)
    noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (side, side))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert("RGB")


def fundus(rng: np.random.Generator) -> Image.Image:
    """A retinal photograph: an orange disc on black, a bright optic disc, dark branching vessels."""
    side = int(rng.integers(256, 513))
    img = Image.new("RGB", (side, side), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    margin = int(side * 0.05)
    draw.ellipse([margin, margin, side - margin, side - margin],
                 fill=(int(rng.integers(150, 230)), int(rng.integers(50, 100)), 20))
    ox, oy = side * rng.uniform(0.3, 0.7), side * rng.uniform(0.4, 0.6)
    for _ in range(int(rng.integers(4, 9))):
        points, angle = [(ox, oy)], rng.uniform(0, 2 * np.pi)
        for _ in range(12):
            angle += rng.normal(0, 0.3)
            x, y = points[-1]
            points.append((x + side * 0.04 * np.cos(angle), y + side * 0.04 * np.sin(angle)))
        draw.line(points, fill=(90, 20, 10), width=int(rng.integers(2, 6)))
    r = side * 0.06
    draw.ellipse([ox - r, oy - r, ox + r, oy + r], fill=(250, 220, 150))
    return img


def histology(rng: np.random.Generator) -> Image.Image:
    """An H&E-stained section: pink stroma with purple nuclei."""
    w, h = _size(rng)
    stroma = np.array([235, 170, 200]) * (0.8 + 0.2 * pink_noise(rng, (h, w))[..., None])
    img = Image.fromarray(np.clip(stroma, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(100, 600))):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(3, 9))
        draw.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=(int(rng.integers(60, 130)), 40, 140))
    return img


KINDS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "document": document, "chart": chart, "scene": scene, "texture": texture, "shapes": shapes,
    "ct_slice": ct_slice, "fundus": fundus, "histology": histology,
}


def negatives(n: int, seed: int) -> Iterator[tuple[str, XRay]]:
    """``n`` (kind, XRay) pairs, read back through :func:`rrg_core.read_xray` as an upload would
    be; every other picture is made grayscale."""
    rng = np.random.default_rng(seed)
    names = list(KINDS)
    for i in range(n):
        kind = names[i % len(names)]
        img = KINDS[kind](rng)
        if (i // len(names)) % 2:
            img, kind = img.convert("L"), f"{kind} (gray)"
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        yield kind, read_xray(buffer.getvalue())
