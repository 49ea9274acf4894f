"""The 14 observations: what a phantom has (sampling) and how each one looks (rendering).

A :class:`Finding` says everything the report needs (side, zone, severity, size) and
carries its own geometry seed, so the same finding renders identically whatever else is
in the image, and a phantom can be rendered with and without it on the same anatomy.
Rendering happens in two steps: findings that change the normal anatomy (a big heart, a
wide mediastinum, volume loss, a broken rib) adjust the :class:`Anatomy` before the scene
is built; all others then paint into the scene's layers and return their masks.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from ..observations import PATHOLOGIES
from .anatomy import (
    SIDES,
    SIGN,
    Anatomy,
    RibBreak,
    Scene,
    diaphragm_level,
    heart_apex,
    hilum,
    lung_ellipse,
    mediastinal_border,
    outline_radius,
    rib_point,
)
from .config import PhantomConfig
from .raster import Array, bezier, draw_curves, noise_bank, noise_slice, norm, ramp, segment_distance

T = TypeVar("T")
CM = 0.047  # patient units per centimetre: the lungs are about 24 cm tall
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")
DEVICES: tuple[str, ...] = ("ett", "central_line", "pacemaker", "sternal_wires", "enteric_tube")

_KINDS: dict[str, tuple[str, ...]] = {
    "Lung Lesion": ("nodule", "mass"),
    "Consolidation": ("plain", "bronchograms"),
    "Pleural Other": ("thickening", "apical", "plaques"),
    "Fracture": ("acute", "healing"),
    "Support Devices": DEVICES,
}
_BILATERAL: dict[str, float] = {"Edema": 1.0, "Atelectasis": 0.3, "Pleural Effusion": 0.3}
_ZONES: dict[str, tuple[float, float, float]] = {  # upper, mid, lower
    "Lung Opacity": (0.2, 0.3, 0.5),
    "Lung Lesion": (0.5, 0.3, 0.2),
    "Consolidation": (0.25, 0.25, 0.5),
    "Pneumonia": (0.2, 0.3, 0.5),
    "Atelectasis": (0.0, 0.3, 0.7),
    "Fracture": (0.3, 0.5, 0.2),
}


@dataclass(frozen=True)
class Finding:
    """One abnormality (or device) in one phantom."""

    observation: str
    certainty: int = 1  # 1: the report states it; -1: the report only hedges it
    side: str | None = None  # the patient's "right", "left" or "bilateral"
    zone: str | None = None  # "upper", "mid" or "lower" third of the lung
    severity: str = "moderate"  # "mild", "moderate" or "severe"
    kind: str = ""  # variant, see _KINDS (a device for Support Devices)
    measure: float | None = None  # cm: nodule/mass size, tube tip above the carina; rib number for fractures
    seed: int = 0  # the renderer's geometry

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES if self.side == "bilateral" else (self.side,) if self.side else ()


def random_finding(observation: str, rng: np.random.Generator, certainty: int = 1, kind: str | None = None) -> Finding:
    """A finding of `observation` with random side, zone, severity and variant."""
    kinds = _KINDS.get(observation, ("",))
    kind = kind if kind is not None else str(rng.choice(kinds))
    severity = "mild" if certainty == -1 else str(rng.choice(SEVERITIES, p=(0.45, 0.35, 0.2)))
    side: str | None = None
    if observation == "Support Devices":
        side = {"central_line": "right" if rng.random() < 0.6 else "left",
                "pacemaker": "left" if rng.random() < 0.85 else "right"}.get(kind)
    elif observation not in ("Enlarged Cardiomediastinum", "Cardiomegaly"):
        side = "bilateral" if rng.random() < _BILATERAL.get(observation, 0.0) else str(rng.choice(SIDES))
    zone = str(rng.choice(("upper", "mid", "lower"), p=_ZONES[observation])) if observation in _ZONES else None
    return Finding(observation, certainty, side, zone, severity, kind, _measure(observation, kind, severity, zone, rng),
                   int(rng.integers(2**31)))


def _measure(observation: str, kind: str, severity: str, zone: str | None, rng: np.random.Generator) -> float | None:
    level = SEVERITIES.index(severity)
    if observation == "Lung Lesion":
        ranges = ((0.8, 1.3), (1.3, 2.0), (2.0, 2.8)) if kind == "nodule" else ((3.0, 4.0), (4.0, 5.5), (5.5, 7.0))
        return round(float(rng.uniform(*ranges[level])), 1)
    if observation == "Fracture":  # posterior rib number; upper ribs hide behind the clavicles
        low, high = {"upper": (3, 4), "mid": (5, 7), "lower": (8, 9)}[zone or "mid"]
        return float(rng.integers(low, high + 1))
    if kind == "ett":
        return float(rng.integers(2, 7))
    return None


def sample_findings(rng: np.random.Generator, config: PhantomConfig | None = None) -> list[Finding]:
    """What one phantom has. A share ``prevalence["No Finding"]`` is free of pathology; the
    others get each pathology with a probability scaled so its overall share matches the
    config (and at least one). Devices are drawn independently."""
    config = config or PhantomConfig()
    prevalence = config.prevalence
    present: list[str] = []
    if rng.random() >= prevalence["No Finding"]:
        scale = 1.0 / max(1e-9, 1.0 - prevalence["No Finding"])
        present = [o for o in PATHOLOGIES if rng.random() < prevalence[o] * scale]
        weights = np.array([prevalence[o] for o in PATHOLOGIES])
        if not present and weights.sum() > 0:
            present = [PATHOLOGIES[rng.choice(len(PATHOLOGIES), p=weights / weights.sum())]]
        if "Pneumonia" in present and "Consolidation" in present:  # the pneumonia is the consolidation
            present.remove("Consolidation")
    findings = [random_finding(o, rng, -1 if rng.random() < config.uncertain_rate else 1) for o in present]
    if rng.random() < prevalence["Support Devices"]:
        count = min(config.max_devices, 1 + int(rng.random() < 0.3) + int(rng.random() < 0.1))
        for device in rng.choice(DEVICES, size=count, replace=False):
            findings.append(random_finding("Support Devices", rng, kind=str(device)))
    return findings


# --- rendering -------------------------------------------------------------------------------


def adjust_anatomy(anatomy: Anatomy, findings: list[Finding]) -> Anatomy:
    """Apply the findings that change the normal anatomy itself."""
    for f in findings:
        adjust = _ADJUST.get(f.observation)
        if adjust:
            anatomy = adjust(f, anatomy, _rng(f, 0))
    return anatomy


def render_findings(scene: Scene, findings: list[Finding]) -> list[list[Array]]:
    """Paint every finding into the scene; per finding, one boolean mask per instance."""
    return [_RENDER[f.observation](f, scene, _rng(f, 1)) for f in findings]


def _rng(f: Finding, stage: int) -> np.random.Generator:
    return np.random.default_rng([f.seed, stage])


def _level(f: Finding, *values: T) -> T:
    """The value for the finding's severity (mild, moderate, severe)."""
    return values[SEVERITIES.index(f.severity)]


# anatomy changes


def _cardiomegaly(f: Finding, a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """A bigger cardiothoracic ratio; a third of the growth goes to the right, and the apex
    stays inside the chest wall."""
    ctr = rng.uniform(*_level(f, (0.53, 0.57), (0.58, 0.63), (0.64, 0.70)))
    growth = 2.0 * (ctr - a.ctr) * a.thorax
    right = max(a.heart_right + 0.35 * growth, 2.0 * ctr * a.thorax - (a.thorax - 0.06))
    return replace(a, ctr=ctr, heart_right=right)


def _widened_mediastinum(f: Finding, a: Anatomy, rng: np.random.Generator) -> Anatomy:
    return replace(a, mediastinal_widening=_level(f, 0.08, 0.12, 0.17) * rng.uniform(0.9, 1.15))


def _volume_loss(f: Finding, a: Anatomy, rng: np.random.Generator) -> Anatomy:
    lift = _level(f, 0.0, 0.03, 0.05)
    right, left = (d - lift if s in f.sides else d for s, d in zip(SIDES, a.dome))
    return replace(a, dome=(right, left))


def _rib_break(f: Finding, a: Anatomy, rng: np.random.Generator) -> Anatomy:
    brk = RibBreak(
        side=f.side or "right",
        rib=int(f.measure or 6) - 1,
        at=rng.uniform(0.5, 0.8),
        step=rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4),
        healing=f.kind == "healing",
    )
    return replace(a, rib_breaks=a.rib_breaks + (brk,))


_ADJUST: dict[str, Callable[[Finding, Anatomy, np.random.Generator], Anatomy]] = {
    "Cardiomegaly": _cardiomegaly,
    "Enlarged Cardiomediastinum": _widened_mediastinum,
    "Atelectasis": _volume_loss,
    "Fracture": _rib_break,
}


# helpers


def _texture(scene: Scene, rng: np.random.Generator, coarse: bool = True) -> Array:
    """Smooth unit-std noise at a random offset: patchiness (coarse) or mottling (fine) of opacities."""
    size = scene.anatomy.pose.size
    return noise_slice(noise_bank(size)[2 if coarse else 1], (int(rng.integers(size)), int(rng.integers(size))), size)


def _spot(scene: Scene, side: str, zone: str, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random point of one lung's zone, `margin` inside the lung, off the heart and the hilum
    (where vessels would hide small findings): the best of 40 candidates."""
    a = scene.anatomy
    top, bottom = a.zone_bounds(side, zone)
    x = scene.side_x(side, 0.0) + SIGN[side] * rng.uniform(a.mediastinum + 0.12, a.thorax, 40)
    y = rng.uniform(top, bottom, 40)
    offsets = ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin))
    score = np.min([_sample(scene, scene.lung[side], x + dx, y + dy) for dx, dy in offsets], axis=0)
    score -= _sample(scene, scene.heart, x, y)
    best = int(np.argmax(score > 0.95)) if (score > 0.95).any() else int(np.argmax(score))
    return float(x[best]), float(y[best])


def _sample(scene: Scene, field: Array, x: Array, y: Array) -> Array:
    """Nearest-pixel values of a field at patient points (0 outside the image)."""
    r, c = scene.anatomy.pose.to_pixels(x, y)
    r, c = np.rint(r).astype(int), np.rint(c).astype(int)
    size = field.shape[0]
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    return np.where(inside, field[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)], 0.0)


def _blobs(X: Array, Y: Array, centre: tuple[float, float], spread: float, rng: np.random.Generator) -> Array:
    """An irregular soft region: the union of a few Gaussians scattered around `centre`, in [0, 1]."""
    out = np.zeros_like(X)
    for _ in range(int(rng.integers(4, 8))):
        bx, by = centre[0] + rng.normal(0, 0.6 * spread), centre[1] + rng.normal(0, 0.6 * spread)
        sigma = spread * rng.uniform(0.3, 0.7)
        out += np.exp(-((X - bx) ** 2 + (Y - by) ** 2) * (0.5 / sigma**2))
    return np.minimum(out, 1.0, out=out)


def _lung_wall(a: Anatomy, side: str, y: float) -> float:
    """Lateral distance of the chest wall (lung outline) at height y."""
    cx, cy, ax, ay = lung_ellipse(a, side)
    return cx + ax * math.cbrt(max(0.0, 1.0 - abs((y - cy) / ay) ** 3))


def _side_window(scene: Scene, side: str, y0: float, y1: float) -> tuple[slice, slice]:
    """Image window of one side of the chest, midline to chest wall, between heights y0 and y1."""
    a = scene.anatomy
    x0, x1 = sorted((scene.side_x(side, -0.15), scene.side_x(side, a.rib_cage + 0.05)))
    return a.pose.box(x0, x1, y0, y1)


def _full(scene: Scene, window: tuple[slice, slice], mask: Array) -> Array:
    """A window's mask placed in a full-size boolean image."""
    out = np.zeros(scene.X.shape, bool)
    out[window] = mask
    return out


def _device_mask(field: Array) -> Array:
    """The device's pixels with the soft fringe of its drawing: about two pixels wider."""
    return field > 0.02 * float(field.max())


# painters: each returns one mask per instance


def _airspace(f: Finding, scene: Scene, rng: np.random.Generator, density: float, sharpness: float) -> list[Array]:
    """Lung opacity, consolidation, pneumonia: fluid or cells replacing the air of a region."""
    side = f.side or "right"
    spread = _level(f, 0.08, 0.11, 0.15) * (1.0 + 0.2 * sharpness)
    (cx, cy) = centre = _spot(scene, side, f.zone or "lower", rng, 0.6 * spread)
    window = scene.anatomy.pose.box(cx - 2.5 * spread, cx + 2.5 * spread, cy - 2.5 * spread, cy + 2.5 * spread)
    lung = scene.lung[side][window]
    blob = _blobs(scene.X[window], scene.Y[window], centre, spread, rng) * (0.85 + 0.15 * _texture(scene, rng)[window])
    region = ramp(blob - 0.45, 0.6 - 0.45 * sharpness) * lung
    if f.kind == "bronchograms":  # air-filled bronchi stand out against the airless lung
        hx, hy = hilum(scene.anatomy, side)
        bronchi = []
        for _ in range(3):
            end = (cx + rng.normal(0, 0.4 * spread), cy + rng.normal(0, 0.4 * spread))
            start = (scene.side_x(side, hx + 0.05), hy + rng.normal(0, 0.03))
            mid = (0.5 * (start[0] + end[0]) + rng.normal(0, 0.02), 0.5 * (start[1] + end[1]))
            bronchi.append(bezier(start, mid, end))
        region *= 1.0 - 0.6 * np.minimum(3.0 * draw_curves(scene.anatomy.pose, bronchi, 1.5)[window], 1.0)
    mottled = np.clip(density * (1.0 + 0.18 * _texture(scene, rng, coarse=False)[window]), 0.0, 1.0)
    scene.fill[window] = np.maximum(scene.fill[window], mottled * region)
    return [_full(scene, window, (region > 0.5) & (lung > 0.5))]


def _lung_opacity(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    return _airspace(f, scene, rng, _level(f, 0.4, 0.55, 0.65), sharpness=0.0)


def _consolidation(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    return _airspace(f, scene, rng, _level(f, 0.75, 0.85, 0.95), sharpness=0.8)


def _pneumonia(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    return _airspace(f, scene, rng, _level(f, 0.6, 0.75, 0.9), sharpness=0.5)


def _lesion(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """A nodule or mass: a lobulated solid sphere adding its own density."""
    side, radius = f.side or "right", 0.5 * (f.measure or 1.5) * CM
    x, y = _spot(scene, side, f.zone or "upper", rng, radius + 0.03)
    window = scene.anatomy.pose.box(x - 1.3 * radius, x + 1.3 * radius, y - 1.3 * radius, y + 1.3 * radius)
    X, Y = scene.X[window], scene.Y[window]
    angle = np.arctan2(Y - y, X - x)
    lobes = 1.0 + 0.08 * np.cos(3 * angle + rng.uniform(0, 6.3)) + 0.05 * np.cos(5 * angle + rng.uniform(0, 6.3))
    r = norm(X - x, Y - y) / (radius * lobes)
    amplitude = 0.45 if f.kind == "nodule" else 0.35
    scene.density[window] += amplitude * np.sqrt(np.maximum(1.0 - r * r, 0.0)) + 0.05 * ramp(1.0 - r, 0.1)
    return [_full(scene, window, r < 1.0 + 1.5 * scene.px / radius)]


def _edema(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """Perihilar (bat-wing) haze, indistinct vessels, cephalisation and Kerley B lines."""
    a, mask = scene.anatomy, np.zeros(scene.X.shape, bool)
    haze_amount = _level(f, 0.22, 0.4, 0.6)
    kerley = []
    for side in SIDES:
        hx, hy = hilum(a, side)
        cx, cy = scene.side_x(side, hx + 0.1), hy + 0.05
        window = a.pose.box(cx - 0.4, cx + 0.4, cy - 0.52, cy + 0.35)
        X, Y, lung = scene.X[window], scene.Y[window], scene.lung[side][window]
        r = norm((X - cx) * (1.0 / 0.26), (Y - cy) * (1.0 / 0.34))
        wing = np.clip(1.0 - r, 0.0, 1.0)
        wing = wing * wing * (3.0 - 2.0 * wing)  # smooth, but confined to the perihilar region
        haze = haze_amount * wing * (0.8 + 0.2 * _texture(scene, rng)[window]) * lung
        scene.fill[window] = np.maximum(scene.fill[window], haze)
        # cephalisation: the upper-lobe vessels above the hilum become prominent
        upper = ramp(hy - 0.1 - Y, 0.3) * ramp(1.5 - r, 0.3) * (f.severity != "mild")
        scene.vessel_gain[window] *= (1.0 - 0.4 * wing * lung) * (1.0 + 0.6 * upper * lung)
        mask[window] |= ((wing > 0.15) | (upper > 0.3)) & (lung > 0.5)
        for _ in range(int(rng.integers(4, 9))):  # short horizontal lines reaching the lateral pleura
            y = rng.uniform(*a.zone_bounds(side, "lower"))
            wall = _lung_wall(a, side, y) - 0.005
            end = (scene.side_x(side, wall - rng.uniform(0.03, 0.05)), y + rng.normal(0, 0.005))
            kerley.append(np.array([(scene.side_x(side, wall), y), end]))
    lines = draw_curves(a.pose, kerley)
    lungs = np.maximum(scene.lung["right"], scene.lung["left"])
    scene.density += 0.12 * np.minimum(lines, 1.0) * lungs
    return [mask | ((lines > 0.1) & (lungs > 0.5))]


def _atelectasis(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """Plate-like atelectasis: a thin dense band, roughly horizontal, with a little haze."""
    masks = []
    for side in f.sides:
        x, y = _spot(scene, side, f.zone or "lower", rng, 0.08)
        half, tilt = rng.uniform(0.07, 0.13), rng.uniform(-0.25, 0.15)
        dx, dy = half * math.cos(tilt), half * math.sin(tilt)
        thick, sign = _level(f, 0.012, 0.018, 0.026), SIGN[side]
        reach = abs(dx) + 4 * thick
        window = scene.anatomy.pose.box(x - reach, x + reach, y - abs(dy) - 4 * thick, y + abs(dy) + 4 * thick)
        d = segment_distance(scene.X[window], scene.Y[window], (x - sign * dx, y + dy), (x + sign * dx, y - dy))
        lung = scene.lung[side][window]
        plate = (0.9 * ramp(thick - d, 1.5 * scene.px) + 0.3 * ramp(3 * thick - d, 3 * thick)) * lung
        scene.fill[window] = np.maximum(scene.fill[window], plate)
        masks.append(_full(scene, window, (d < thick + 2 * scene.px) & (lung > 0.3)))
    return masks


def _pneumothorax(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """Air between lung and chest wall: a lucent rim without markings, and the pleural line."""
    a, side = scene.anatomy, f.side or "right"
    cx, cy, ax, ay = lung_ellipse(a, side)
    apical = rng.uniform(*_level(f, (0.08, 0.11), (0.15, 0.2), (0.26, 0.34)))
    lateral = rng.uniform(*_level(f, (0.0, 0.015), (0.04, 0.07), (0.1, 0.15)))
    collapsed = (cx - lateral / 2, cy + apical / 2, ax - lateral / 2, ay - apical / 2)
    w = _side_window(scene, side, cy - ay - 0.05, a.dome[SIDES.index(side)] + 0.35)
    radius = outline_radius(scene.lateral(side, w), scene.Y[w], collapsed)
    lung, lat = scene.lung[side][w], scene.lateral(side, w)
    rim = ramp((radius - 1.0) * collapsed[2], scene.px) * lung
    rim *= 1.0 - ramp(scene.Y[w] - hilum(a, side)[1], 0.05) * ramp(cx - 0.5 * ax - lat, 0.02)  # not behind the heart
    scene.vessel_gain[w] *= 1.0 - rim
    scene.lucency[w] += 0.15 * rim
    scene.density[w] += 0.12 * ramp(scene.px - np.abs(radius - 1.0) * collapsed[2], scene.px) * lung
    scene.fill[w] = np.maximum(scene.fill[w], _level(f, 0.0, 0.1, 0.2) * (lung - rim))  # the collapsing lung
    return [_full(scene, w, rim > 0.5)]


def _effusion(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """Dependent fluid: fills the costophrenic angle, rises along the wall (meniscus), hides the dome."""
    a, masks = scene.anatomy, []
    for side in f.sides:
        height = rng.uniform(*_level(f, (0.12, 0.18), (0.4, 0.52), (0.7, 0.9)))
        angle = a.dome[SIDES.index(side)] + 0.2  # level of the costophrenic angle
        w = _side_window(scene, side, angle - height - 0.15, angle + 0.15)
        q = np.clip((scene.lateral(side, w) - a.mediastinum) * (1.0 / (a.thorax - a.mediastinum)), 0.0, 1.0)
        wet = ramp(scene.Y[w] - angle + height * (0.45 + 0.55 * q * q), 0.05 + 0.1 * height)
        lung = scene.lung[side][w]
        scene.fill[w] = np.maximum(scene.fill[w], wet * lung)
        scene.vessel_gain[w] *= 1.0 - wet * lung
        fluid = (wet > 0.5) & (lung > 0.5)
        beside_heart = fluid & (scene.heart[w] < 0.5)  # what shows; a big heart may hide all of it
        masks.append(_full(scene, w, beside_heart if beside_heart.any() else fluid))
    return masks


def _pleural_other(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """Pleural thickening along the lateral wall or the apex, or calcified plaques."""
    a, side = scene.anatomy, f.side or "right"
    apex, dome = a.apex[SIDES.index(side)], a.dome[SIDES.index(side)]
    if f.kind == "plaques":
        mask = np.zeros(scene.X.shape, bool)
        for _ in range(int(rng.integers(2, 5))):
            y, length = rng.uniform(apex + 0.35, dome + 0.05), rng.uniform(0.04, 0.07)
            x = scene.side_x(side, _lung_wall(a, side, y) - 0.01)
            w = a.pose.box(x - 0.03, x + 0.03, y - length - 0.01, y + length + 0.01)
            plaque = ramp(1.0 - norm((scene.X[w] - x) * (1.0 / 0.014), (scene.Y[w] - y) * (1.0 / length)), 0.3)
            scene.density[w] += 0.22 * plaque
            mask[w] |= plaque > 0.05
        return [mask]
    thick = _level(f, 0.02, 0.028, 0.038) * (1.5 if f.kind == "apical" else 1.0)
    if f.kind == "apical":
        top, bottom = apex - 0.05, apex + 0.16
    else:
        top = rng.uniform(apex + 0.3, dome - 0.35)
        bottom = top + rng.uniform(0.2, 0.4)
    w = _side_window(scene, side, top, bottom)
    lung, Y = scene.lung[side][w], scene.Y[w]
    lateral = ramp(scene.lateral(side, w) - lung_ellipse(a, side)[0], 0.05)  # the chest wall, not the mediastinum
    wall = (1.0 - scene.lung_radius[side][w]) * lung_ellipse(a, side)[2]  # distance inside the outline
    along = ramp(np.minimum(Y - top, bottom - Y), 0.05) * lateral
    scene.fill[w] = np.maximum(scene.fill[w], 0.95 * ramp(thick - wall, scene.px) * lung * along)
    return [_full(scene, w, (wall < thick + 2 * scene.px) & (lung > 0.3) & (along > 0.5))]


def _fracture(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    """The break itself was drawn with the ribs (see _rib_break); mask a small disc around it."""
    a = scene.anatomy
    brk = next(b for b in a.rib_breaks if b.side == (f.side or "right") and b.rib == int(f.measure or 6) - 1)
    x, y = rib_point(a, brk.side, brk.rib, brk.at)
    return [norm(scene.X - x, scene.Y - y) < 0.05]


def _cardiomegaly_mask(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    return [(scene.heart > 0.5) & (scene.Y < diaphragm_level(scene.anatomy))]


def _mediastinum_mask(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    a = scene.anatomy
    inside = np.abs(scene.X - a.midline) < mediastinal_border(a, scene.Y) + 0.01
    return [inside & (scene.Y > -0.8) & (scene.Y < a.heart_top)]


# support devices


def _device(f: Finding, scene: Scene, rng: np.random.Generator) -> list[Array]:
    metal = _DEVICES[f.kind](f, scene, rng)
    scene.density += metal
    return [_device_mask(metal)]


def _endotracheal_tube(f: Finding, scene: Scene, rng: np.random.Generator) -> Array:
    a = scene.anatomy
    tip = a.carina - (f.measure or 4.0) * CM
    x = a.midline + rng.uniform(-0.01, 0.01)
    path = bezier((x + rng.uniform(-0.05, 0.05), -1.2), (x + rng.uniform(-0.02, 0.02), 0.5 * (tip - 1.2)), (x, tip))
    walls = draw_curves(a.pose, [path - np.array([0.012, 0.0]), path + np.array([0.012, 0.0])])
    return 0.1 * walls + 0.3 * draw_curves(a.pose, [path])


def _central_line(f: Finding, scene: Scene, rng: np.random.Generator) -> Array:
    a, m = scene.anatomy, scene.anatomy.midline
    tip = (m - 0.08, a.heart_top + rng.uniform(-0.08, 0.06))  # superior vena cava
    if f.side == "left":  # left subclavian, under the clavicle, across the midline
        path = bezier((m + 0.8, a.clavicle + 0.02), (m + 0.35, a.clavicle + 0.08), (m - 0.02, a.clavicle + 0.1), tip)
    else:  # right internal jugular, down the neck
        path = bezier((m - 0.3, -1.2), (m - 0.2, -0.75), (m - 0.08, -0.55), tip)
    return 0.35 * draw_curves(a.pose, [path], 1.5)


def _pacemaker(f: Finding, scene: Scene, rng: np.random.Generator) -> Array:
    a, m = scene.anatomy, scene.anatomy.midline
    sign = SIGN[f.side or "left"]
    gx, gy = m + sign * rng.uniform(0.45, 0.6), a.clavicle + rng.uniform(0.1, 0.18)
    w = a.pose.box(gx - 0.1, gx + 0.1, gy - 0.07, gy + 0.07)
    r = outline_radius(scene.X[w] - gx, scene.Y[w] - gy, (0.0, 0.0, 0.075, 0.05))  # a rounded rectangle
    metal = np.zeros_like(scene.X)
    metal[w] = 1.2 * ramp(1.0 - r, 0.15) + 0.3 * ramp(0.5 - r, 0.1)  # can and header
    apex_x, apex_y = heart_apex(a)
    vein = (m + sign * 0.12, a.clavicle + 0.08)
    tips = ((m - 0.1, a.heart_top + 0.12), (0.5 * (m + apex_x), apex_y))  # right atrium, right ventricle
    leads = [bezier((gx - sign * 0.06, gy), vein, (m - 0.06, a.heart_top - 0.05), tip) for tip in tips]
    return metal + 0.5 * draw_curves(a.pose, leads, 1.5)


def _sternal_wires(f: Finding, scene: Scene, rng: np.random.Generator) -> Array:
    a = scene.anatomy
    t = np.linspace(0.0, 2.0 * np.pi, 40)
    wires = []
    for y in np.linspace(-0.55, a.heart_top + 0.35, int(rng.integers(5, 8))):  # a loop and its twisted end
        x = a.midline + rng.normal(0.0, 0.006)
        wires.append(np.stack([x + 0.028 * np.cos(t), y + rng.normal(0.0, 0.004) + 0.012 * np.sin(t)], axis=1))
        wires.append(np.array([(x, y - 0.01), (x, y + 0.03)]))
    return 0.7 * np.minimum(draw_curves(a.pose, wires), 1.5)


def _enteric_tube(f: Finding, scene: Scene, rng: np.random.Generator) -> Array:
    a, m = scene.anatomy, scene.anatomy.midline
    dome = a.dome[1]  # down the oesophagus, through the left dome, into the stomach
    stomach = (m + rng.uniform(0.25, 0.35), dome + 0.16)
    path = bezier((m + 0.01, -1.2), (m + 0.04, 0.0), (m + 0.03, dome + 0.08), stomach)
    return 0.25 * draw_curves(a.pose, [path], 1.5)


_DEVICES: dict[str, Callable[[Finding, Scene, np.random.Generator], Array]] = {
    "ett": _endotracheal_tube,
    "central_line": _central_line,
    "pacemaker": _pacemaker,
    "sternal_wires": _sternal_wires,
    "enteric_tube": _enteric_tube,
}

_RENDER: dict[str, Callable[[Finding, Scene, np.random.Generator], list[Array]]] = {
    "Enlarged Cardiomediastinum": _mediastinum_mask,
    "Cardiomegaly": _cardiomegaly_mask,
    "Lung Opacity": _lung_opacity,
    "Lung Lesion": _lesion,
    "Edema": _edema,
    "Consolidation": _consolidation,
    "Pneumonia": _pneumonia,
    "Atelectasis": _atelectasis,
    "Pneumothorax": _pneumothorax,
    "Pleural Effusion": _effusion,
    "Pleural Other": _pleural_other,
    "Fracture": _fracture,
    "Support Devices": _device,
}
