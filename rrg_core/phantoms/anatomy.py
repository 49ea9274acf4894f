"""The normal chest: randomised anatomy parameters and their rendering into density layers.

The image is built like a radiograph: a *density* (projected attenuation) map is summed
from soft tissue, bone and metal, lung air is subtracted from it, and a tone curve maps
density to display grey (bone bright, air dark). Findings act on the same layers (fluid
replaces lung air, a pneumothorax removes lung markings, ...), which is why the scene
keeps them apart until :func:`compose`.

Sides are the patient's: the right lung is on the image's left (radiological convention).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .raster import (
    Array,
    Pose,
    bone_profile,
    letter,
    noise_bank,
    noise_slice,
    norm,
    ramp,
    segment_distance,
    soften,
    splat,
)

SIDES: tuple[str, str] = ("right", "left")
SIGN: dict[str, float] = {"right": -1.0, "left": 1.0}  # direction of the patient's side on the image x axis

# Density units: 1.0 is the full soft-tissue path through the middle of the trunk.
LUNG_AIR = 0.52  # density removed by a fully aerated lung at its thickest
HEART_OVER_LUNG = 0.93  # share of lung air the heart displaces where it overlaps a lung
VESSEL = 0.65
RIB_WIDTH = 0.46  # posterior rib height as a share of the rib spacing
ANTERIOR_RIB_WIDTH = 0.5
RIB_COUNT = 10


@dataclass(frozen=True)
class RibBreak:
    """A rib fracture: where it is and how the lateral fragment is displaced."""

    side: str
    rib: int  # 0 = first posterior rib
    at: float  # position along the rib, 0 at the spine, 1 at the lateral chest wall
    step: float  # displacement of the lateral fragment, in rib spacings
    healing: bool  # callus around the break


@dataclass(frozen=True)
class Anatomy:
    """Everything that makes one normal chest differ from another (patient coordinates)."""

    pose: Pose
    midline: float
    thorax: float  # inner half-width of the rib cage at the bases
    apex: tuple[float, float]  # y of the lung apices (right, left)
    dome: tuple[float, float]  # y of the top of each hemidiaphragm (right, left)
    mediastinum: float  # half-width of the upper mediastinum
    heart_right: float  # how far the right heart border lies right of the midline
    ctr: float  # cardiothoracic ratio
    heart_top: float
    heart_shape: float  # power of the left border's curve: below 1 rounder, above 1 straighter
    knob: tuple[float, float]  # aortic knob: y and radius
    carina: float
    trachea: float  # half-width of the air column
    spine: float  # half-width of the vertebral bodies
    vertebra: float  # vertebral height
    ribs: tuple[float, float, float]  # y of the first posterior rib, rib spacing, anterior rib spacing
    clavicle: float  # y of the medial clavicle ends
    body: tuple[float, float]  # half-widths of the neck and the trunk
    shoulders: float  # y where the neck starts to widen into the shoulders
    breasts: bool
    gastric_bubble: bool
    window: tuple[float, float, float]  # tone curve: density shown black, density shown white, mid-tone lift
    grain: float  # noise std in display units
    noise_offset: tuple[int, int]
    marker: str | None  # "L", "R" or None
    vessel_seed: int
    mediastinal_widening: float = 0.0  # set by Enlarged Cardiomediastinum
    rib_breaks: tuple[RibBreak, ...] = ()  # set by Fracture

    @property
    def rib_cage(self) -> float:
        """Outer half-width of the rib cage."""
        return self.thorax + 0.06

    def zone_bounds(self, side: str, zone: str) -> tuple[float, float]:
        """y range of the upper, mid or lower third of one lung."""
        i = SIDES.index(side)
        top, bottom = self.apex[i], self.dome[i] + 0.12
        third = (bottom - top) / 3.0
        k = ("upper", "mid", "lower").index(zone)
        return top + k * third, top + (k + 1) * third


def sample_anatomy(rng: np.random.Generator, size: int, marker_probability: float = 0.5) -> Anatomy:
    """A plausible adult PA chest: size, position, rotation, inspiration and exposure vary."""
    u = rng.uniform
    dome_right = u(0.26, 0.42)  # depth of inspiration
    thorax = u(0.70, 0.80)
    return Anatomy(
        pose=Pose(size, tilt=math.radians(u(-3.5, 3.5)), zoom=u(0.88, 1.05), shift=(u(-0.04, 0.04), u(-0.05, 0.05))),
        midline=u(-0.02, 0.02),
        thorax=thorax,
        apex=(u(-0.82, -0.74), u(-0.82, -0.74)),
        dome=(dome_right, dome_right + u(0.02, 0.07)),
        mediastinum=u(0.10, 0.125),
        heart_right=u(0.17, 0.22),
        ctr=u(0.40, 0.48),
        heart_top=u(-0.08, 0.0),
        heart_shape=u(0.7, 1.1),
        knob=(u(-0.40, -0.32), u(0.045, 0.065)),
        carina=u(-0.30, -0.22),
        trachea=u(0.026, 0.034),
        spine=u(0.065, 0.08),
        vertebra=u(0.095, 0.11),
        ribs=(u(-0.93, -0.88), u(0.118, 0.132), u(0.15, 0.17)),
        clavicle=u(-0.66, -0.58),
        body=(u(0.26, 0.34), u(0.9, 1.1)),
        shoulders=u(-1.3, -1.08),
        breasts=bool(rng.random() < 0.4),
        gastric_bubble=bool(rng.random() < 0.7),
        window=(u(0.0, 0.1), u(1.05, 1.25), u(-0.15, 0.25)),
        grain=u(0.005, 0.015),
        noise_offset=(int(rng.integers(size)), int(rng.integers(size))),
        marker=(str(rng.choice(["L", "R"])) if rng.random() < marker_probability else None),
        vessel_seed=int(rng.integers(2**31)),
    )


@dataclass
class Scene:
    """Density layers of one chest. Finding renderers edit the last four, then :func:`compose`."""

    anatomy: Anatomy
    X: Array
    Y: Array
    lung: dict[str, Array]  # lung field per side, 0..1 with anti-aliased edges
    lung_radius: dict[str, Array]  # normalised radius of each lung's outline ellipse (1 on the chest wall)
    heart: Array  # heart silhouette, 0..1
    base: Array  # density of everything except lung air and vessels
    air: Array  # density removed by lung air
    vessels: Array
    fill: Array = field(init=False)  # share of lung air replaced by fluid or tissue
    lucency: Array = field(init=False)  # extra air (pneumothorax), density units
    vessel_gain: Array = field(init=False)  # multiplies the lung markings
    density: Array = field(init=False)  # extra attenuation: lesions, calcium, metal

    def __post_init__(self) -> None:
        shape = self.X.shape
        self.fill = np.zeros(shape, np.float32)
        self.lucency = np.zeros(shape, np.float32)
        self.vessel_gain = np.ones(shape, np.float32)
        self.density = np.zeros(shape, np.float32)

    @property
    def px(self) -> float:
        return self.anatomy.pose.pixel

    def lateral(self, side: str, window: tuple[slice, slice] = (slice(None), slice(None))) -> Array:
        """Distance of every pixel (of a window) from the midline, positive towards `side`."""
        return SIGN[side] * (self.X[window] - self.anatomy.midline)

    def side_x(self, side: str, lateral: float) -> float:
        """Patient x of a point `lateral` away from the midline on one side."""
        return self.anatomy.midline + SIGN[side] * lateral


def build_scene(a: Anatomy) -> Scene:
    """Render the normal chest of `a` into separate density layers."""
    X, Y = a.pose.grids()
    edge = 1.2 * a.pose.pixel
    paint = _Painter(a, X, Y)
    m, dome = a.midline, max(a.dome)
    heart = paint(np.zeros_like(X), (m - 0.5, m + 1.0, a.heart_top - 0.03, dome + 0.4), _heart, a, edge)
    lung, radius, air = {}, {}, np.zeros_like(X)
    base = _soft_tissue(a, X, Y, edge)
    y0, spacing, front_spacing = a.ribs
    for side in SIDES:
        window = a.pose.box(*_side_box(a, side, a.rib_cage, min(a.apex) - 0.03, dome + 0.32))
        lung[side], radius[side] = np.zeros_like(X), np.full_like(X, 9.0)  # radius 9: far outside the lung
        lung[side][window], radius[side][window], depth = _lung(X[window], Y[window], a, side, edge)
        air[window] += depth
        posterior = _side_box(a, side, a.rib_cage, y0 - 0.12, y0 + RIB_COUNT * spacing + 0.2)
        paint(base, posterior, _posterior_ribs, a, side, edge)
        paint(base, _side_box(a, side, a.rib_cage, y0, y0 + 0.45 + 7 * front_spacing, inner=0.25), _anterior_ribs, a,
              side)
        paint(base, _side_box(a, side, 1.3, a.clavicle - 0.3, a.clavicle + 0.1), _shoulder_girdle, a, side)
        paint(base, _side_box(a, side, 0.5, a.heart_top - 0.2, a.heart_top + 0.35), _hilum, a, side)
        if a.breasts:
            paint(base, _side_box(a, side, 1.2, min(a.dome) - 0.2, dome + 0.3), _breast, a, side)
    paint(base, (m - 0.1, m + 0.1, -1.5, 1.5), _spine, a, edge)
    paint(base, (m - 0.3, m + 0.3, -1.5, a.carina + 0.2), _airways, a, edge)
    if a.gastric_bubble:
        paint(base, (m, m + 0.6, a.dome[1], a.dome[1] + 0.2), _gastric_bubble, a, edge)
    medium = noise_slice(noise_bank(a.pose.size)[1], a.noise_offset, a.pose.size)
    air *= (1.0 - HEART_OVER_LUNG * heart) * (1.0 + 0.05 * medium)  # with a faint parenchymal texture
    vessels = _vessels(a) * (air > 0.05) * (1.0 - heart)
    return Scene(a, X, Y, lung, radius, heart, base, air, vessels)


def _side_box(
    a: Anatomy, side: str, reach: float, y0: float, y1: float, inner: float = -0.15
) -> tuple[float, float, float, float]:
    """Patient box of one side: from `inner` (negative: across the midline) out to `reach`, y0 to y1."""
    inner, outer = a.midline + SIGN[side] * inner, a.midline + SIGN[side] * reach
    return min(inner, outer), max(inner, outer), y0, y1


class _Painter:
    """Adds a part into a layer, computing it on the image window of its patient box only."""

    def __init__(self, a: Anatomy, X: Array, Y: Array) -> None:
        self.a, self.X, self.Y = a, X, Y

    def __call__(
        self, layer: Array, box: tuple[float, float, float, float], part: Callable[..., Array], *args: object
    ) -> Array:
        window = self.a.pose.box(*box)
        layer[window] += part(self.X[window], self.Y[window], *args)
        return layer


def compose(scene: Scene) -> Array:
    """Density layers -> display image (float32 in [0, 1], bone bright), with film grain."""
    a = scene.anatomy
    aerated = 1.0 - np.clip(scene.fill, 0.0, 1.0)
    density = (
        scene.base
        - LUNG_AIR * scene.air * aerated
        - scene.lucency
        + VESSEL * scene.vessels * scene.vessel_gain * aerated
        + scene.density
    )
    lo, hi, lift = a.window
    density = soften(density)  # the imaging chain's blur
    image = np.clip((density - lo) * (1.0 / (hi - lo)), 0.0, 1.0)
    image += lift * image * (1.0 - image)  # like a gamma below (lift > 0) or above 1, at a fraction of the cost
    grain = noise_slice(noise_bank(a.pose.size)[0], a.noise_offset, a.pose.size)
    image += a.grain * (0.5 + image) * grain
    if a.marker:
        _stamp_marker(image, a.marker)
    return np.clip(image, 0.0, 1.0, out=image).astype(np.float32, copy=False)


# --- the parts -----------------------------------------------------------------------------


def lung_ellipse(a: Anatomy, side: str) -> tuple[float, float, float, float]:
    """Centre (lateral, y) and semi-axes of the superellipse that outlines one lung."""
    i = SIDES.index(side)
    ax = 0.47 * a.thorax
    cy = a.dome[i] + 0.12
    return a.thorax - ax, cy, ax, cy - a.apex[i]


def outline_radius(lat: Array, Y: Array, ellipse: tuple[float, float, float, float]) -> Array:
    """Normalised superellipse radius (power 3: a rounded apex, not a point); 1 on the outline."""
    cx, cy, ax, ay = ellipse
    dx, dy = np.abs(lat - cx) * (1.0 / ax), np.abs(Y - cy) * (1.0 / ay)
    return np.cbrt(dx * dx * dx + dy * dy * dy)


def _lung(X: Array, Y: Array, a: Anatomy, side: str, edge: float) -> tuple[Array, Array, Array]:
    """One lung: the outline field, the outline's normalised radius and the air depth."""
    lat = SIGN[side] * (X - a.midline)
    ellipse = lung_ellipse(a, side)
    radius = outline_radius(lat, Y, ellipse)
    wall = (1.0 - radius) * ellipse[2]
    peak = 0.45 * a.thorax  # the dome is highest here and falls to the costophrenic angle
    slope = (lat - peak) * (1.0 / (a.thorax - peak))
    dome = a.dome[SIDES.index(side)]
    dist = np.minimum(np.minimum(wall, dome + 0.2 * slope * slope - Y), lat - mediastinal_border(a, Y))
    if side == "left":  # the aortic knob and the main pulmonary artery bulge into the left lung
        knob_y, knob_r = a.knob
        dist = np.minimum(dist, norm(lat - a.mediastinum + 0.025, Y - knob_y) - knob_r)
        dist = np.minimum(dist, norm(lat - a.mediastinum + 0.01, Y - a.heart_top + 0.05) - 0.03)
    field_ = ramp(dist, edge)
    depth = field_ * (0.3 + 0.7 * np.sqrt(np.maximum(1.0 - radius * radius, 0.0)))
    return field_, radius, depth


def mediastinal_border(a: Anatomy, Y: Array) -> Array:
    """Half-width of the mediastinum; below the heart top the lungs reach behind the heart."""
    upper = a.mediastinum + a.mediastinal_widening * np.exp(-(((Y + 0.45) * (1.0 / 0.28)) ** 2))
    behind_heart = np.clip((Y - a.heart_top) * (1.0 / 0.12), 0.0, 1.0)
    return upper + (0.05 - upper) * behind_heart


def heart_apex(a: Anatomy) -> tuple[float, float]:
    """The most lateral point of the left heart border, just above the diaphragm."""
    return a.midline + 2.0 * a.ctr * a.thorax - a.heart_right, diaphragm_level(a) - 0.04


def diaphragm_level(a: Anatomy) -> float:
    """Where the heart meets the diaphragm (a little below the left dome's top)."""
    return a.dome[1] + 0.04


def _heart(X: Array, Y: Array, a: Anatomy, edge: float) -> Array:
    """The heart between two borders that leave the mediastinum at ``heart_top``.

    The right border bulges out to ``heart_right`` (right atrium); the left border sweeps
    down and out to the apex at the diaphragm, so the width there is the cardiothoracic
    ratio times the thorax. Below the diaphragm there is no lung to displace, so the heart
    simply continues out of sight.
    """
    t = np.clip((Y - a.heart_top) * (1.0 / (diaphragm_level(a) - a.heart_top)), 0.0, 1.0)  # 0 top, 1 diaphragm
    m, top = a.midline, a.mediastinum
    apex_x, _ = heart_apex(a)
    right = m - top - (a.heart_right - top) * np.sin(np.minimum(t * (np.pi / 1.2), np.pi / 2))
    left = m + top + (apex_x - m - top) * np.sin(t * (np.pi / 2)) ** a.heart_shape
    return ramp(np.minimum(left - X, X - right), edge) * ramp(Y - a.heart_top, edge)


def _soft_tissue(a: Anatomy, X: Array, Y: Array, edge: float) -> Array:
    """Neck, shoulders and trunk as a rounded slab, thickest in the middle."""
    neck, trunk = a.body
    shoulders = np.clip((Y - a.shoulders) * (1.0 / 0.32), 0.0, 1.0)
    armpits = np.clip((Y + 0.3) * (1.0 / 0.4), 0.0, 1.0)  # the shoulders are wider than the trunk
    half = neck + (1.3 - neck) * shoulders * shoulders * (3.0 - 2.0 * shoulders) + (trunk - 1.3) * armpits
    off = np.abs(X - a.midline) / half
    return ramp((1.0 - off) * half, 2 * edge) * (0.2 + 0.8 * np.sqrt(np.maximum(1.0 - off * off, 0.0)))


def _breast(X: Array, Y: Array, a: Anatomy, side: str) -> Array:
    """A breast shadow over the lung base: sharp lower contour, fading out upwards."""
    lat, dome = SIGN[side] * (X - a.midline), a.dome[SIDES.index(side)]
    r = norm((lat - 0.55 * a.thorax) * (1.0 / 0.36), (Y - dome - 0.06) * (1.0 / 0.22))
    return 0.09 * ramp(1.0 - r, 0.04) * np.clip((Y - dome + 0.2) * (1.0 / 0.35), 0.0, 1.0)


def _gastric_bubble(X: Array, Y: Array, a: Anatomy, edge: float) -> Array:
    """Air in the stomach fundus, under the left dome (negative density)."""
    r = norm((X - a.midline - 0.42 * a.thorax) * (1.0 / 0.09), (Y - a.dome[1] - 0.1) * (1.0 / 0.055))
    return -0.3 * ramp(1.0 - r, 0.2)


def _airways(X: Array, Y: Array, a: Anatomy, edge: float) -> Array:
    """Trachea and main bronchi: an air column darker than the mediastinum around it (negative density)."""
    column = ramp(a.trachea - np.abs(X - a.midline), edge) * ramp(a.carina - Y, 4 * edge)
    carina = (a.midline, a.carina)
    right = segment_distance(X, Y, carina, (a.midline - 0.11, a.carina + 0.15))
    left = segment_distance(X, Y, carina, (a.midline + 0.15, a.carina + 0.12))
    bronchi = ramp(0.75 * a.trachea - np.minimum(right, left), edge)
    return -0.18 * column - 0.12 * bronchi


def _spine(X: Array, Y: Array, a: Anatomy, edge: float) -> Array:
    """Vertebral bodies with darker disc spaces, seen through the mediastinum and the heart."""
    off = np.abs(X - a.midline) * (1.0 / a.spine)
    body = ramp(1.0 - off, edge / a.spine) * np.sqrt(np.maximum(1.0 - 0.6 * off * off, 0.0))
    phase = (Y + 1.0) * (1.0 / a.vertebra)
    phase -= np.floor(phase)
    discs = ramp(np.minimum(phase - 0.1, 0.95 - phase), 0.08)
    pedicles = ramp(0.35 - np.abs(off - 0.75), 0.15) * ramp(0.25 - np.abs(phase - 0.3), 0.12)
    return 0.11 * body * (0.75 + 0.25 * discs) + 0.04 * pedicles


def _rib_bow(q: Array | float) -> Array | float:
    """How a posterior rib's centre line rises from the spine and drops at the lateral wall."""
    return -0.2 * q + 0.28 * (q * q) * (q * q)


def rib_point(a: Anatomy, side: str, rib: int, at: float) -> tuple[float, float]:
    """Patient (x, y) of the centre of posterior rib `rib` at position `at` along it."""
    y0, spacing, _ = a.ribs
    lateral = 0.05 + at * (a.rib_cage - 0.05)
    return a.midline + SIGN[side] * lateral, y0 + _rib_bow(at) + spacing * (rib + RIB_WIDTH / 2)


def _rib_position(X: Array, a: Anatomy, side: str) -> tuple[Array, Array]:
    """Position along the ribs (0 at the costovertebral joints, 1 at the outer cage) and the cage fade."""
    q = (SIGN[side] * (X - a.midline) - 0.05) * (1.0 / (a.rib_cage - 0.05))
    return q, ramp(np.minimum(q - 0.05, 1.0 - q), 0.08)


def _posterior_ribs(X: Array, Y: Array, a: Anatomy, side: str, edge: float) -> Array:
    """Posterior ribs: curved bands with bright cortex, rib k where the phase lies in [k, k + width)."""
    y0, spacing, _ = a.ribs
    q, cage = _rib_position(X, a, side)
    phase = (Y - y0 - _rib_bow(q)) * (1.0 / spacing)
    index = np.floor(phase)
    ribs = bone_profile((phase - index) * (1.0 / RIB_WIDTH)) * ((index >= 0) & (index < RIB_COUNT))
    for brk in (b for b in a.rib_breaks if b.side == side):
        ribs = _break_rib(a, brk, q, phase, ribs, edge)
    return 0.13 * cage * ribs


def _anterior_ribs(X: Array, Y: Array, a: Anatomy, side: str) -> Array:
    """Anterior ribs: fainter, wider bands running down towards the sternum, fading at the cartilage."""
    y0, _, spacing = a.ribs
    q, cage = _rib_position(X, a, side)
    medial = np.clip(1.0 - q, 0.0, 1.0)
    phase = (Y - y0 - 0.04 - 0.34 * medial * np.sqrt(medial)) * (1.0 / spacing)
    index = np.floor(phase)
    ribs = bone_profile((phase - index) * (1.0 / ANTERIOR_RIB_WIDTH), hollow=0.4) * ((index >= 0) & (index < 7))
    return 0.08 * cage * ribs * ramp(q - 0.38, 0.12)


def _break_rib(a: Anatomy, brk: RibBreak, q: Array, phase: Array, ribs: Array, edge: float) -> Array:
    """Cut one rib, shift its lateral fragment and, if healing, add callus around the break."""
    centre = brk.rib + RIB_WIDTH / 2
    span = a.rib_cage - 0.05  # patient units per unit of q
    near = (np.abs(phase - centre) < 0.5) & (q > brk.at - 0.15) & (q < brk.at + 0.35)
    lateral = np.clip((q - brk.at) * span / edge, 0.0, 1.0) * np.clip((brk.at + 0.35 - q) / 0.15, 0.0, 1.0)
    shifted = phase + brk.step * lateral - brk.rib
    rib = bone_profile(shifted * (1.0 / RIB_WIDTH)) * ((shifted >= 0) & (shifted < RIB_WIDTH))
    rib *= 1.0 - ramp(2.5 * edge - np.abs(q - brk.at) * span, edge)
    if brk.healing:
        rib += 0.8 * ramp(0.03 - norm((q - brk.at) * span, (phase - centre) * a.ribs[1]), 0.03)
    return np.where(near, rib, ribs)


def _shoulder_girdle(X: Array, Y: Array, a: Anatomy, side: str) -> Array:
    """Clavicle (rising laterally with a gentle bow) and the humeral head at the image corner."""
    lat = SIGN[side] * (X - a.midline)
    q = (lat - 0.08) * (1.0 / 0.6)
    centre = a.clavicle - 0.19 * q - 0.02 * np.sin(np.pi * q)
    thick = 0.07 - 0.02 * q
    clavicle = bone_profile((Y - centre) / thick + 0.5, hollow=0.35) * ramp(np.minimum(q, 1.3 - q), 0.05)
    r = norm(lat - 1.02, Y - a.clavicle + 0.04) * (1.0 / 0.18)
    return 0.16 * clavicle + 0.12 * np.sqrt(np.maximum(1.0 - r * r, 0.0))


def hilum(a: Anatomy, side: str) -> tuple[float, float]:
    """(lateral distance, y) of a hilum; the left one sits a little higher."""
    return a.mediastinum + 0.07, a.heart_top + (0.1 if side == "right" else 0.04)


def _hilum(X: Array, Y: Array, a: Anatomy, side: str) -> Array:
    """The hilar vessel shadow: a soft density lateral to the mediastinum."""
    hx, hy = hilum(a, side)
    lat = SIGN[side] * (X - a.midline)
    return 0.14 * np.exp(-(((lat - hx) * (1.0 / 0.055)) ** 2 + ((Y - hy) * (1.0 / 0.11)) ** 2))


def _vessels(a: Anatomy) -> Array:
    """Branching pulmonary vessels from each hilum, thinner and fainter towards the periphery.

    Each lung takes a tree from a fixed bank and stretches, tilts and places it.
    """
    rng = np.random.default_rng(a.vessel_seed)
    trees = _vessel_trees(a.pose.size)
    xs, ys, ws = [], [], []
    for side in SIDES:
        points, weights = trees[int(rng.integers(len(trees)))]
        hx, hy = hilum(a, side)
        tilt, scale = rng.normal(0.0, 0.08), a.thorax * rng.uniform(0.9, 1.1)
        cos, sin = scale * math.cos(tilt), scale * math.sin(tilt)
        xs.append(a.midline + SIGN[side] * (hx + cos * points[:, 0] - sin * points[:, 1]))
        ys.append(hy + sin * points[:, 0] + cos * points[:, 1])
        ws.append(weights)
    rows, cols = a.pose.to_pixels(np.concatenate(xs), np.concatenate(ys))
    return soften(soften(splat((a.pose.size, a.pose.size), rows, cols, np.concatenate(ws))))


@lru_cache(maxsize=4)
def _vessel_trees(size: int, count: int = 48) -> tuple[tuple[Array, Array], ...]:
    """A fixed bank of vessel trees: points (lateral, down) from the hilum in thorax units,
    about a pixel apart, with weights (vessel calibre). Growing trees per image cost more
    than all the rest of a phantom."""
    rng = np.random.default_rng(0x7EE5)
    step = 2.0 / size / 0.75  # one pixel, in units of a typical thorax half-width
    bank = []
    for _ in range(count):
        n = int(rng.integers(8, 11))
        angle = np.linspace(-1.5, 1.4, n) + rng.normal(0.0, 0.1, n)  # 0 = lateral, negative = up
        start = np.stack([rng.uniform(-0.03, 0.05, n), 0.16 * np.sin(angle)], axis=1)
        length, weight = 0.19 * (1.0 + 0.3 * np.sin(angle)), 1.0  # longer to the bases
        points, weights = [], []
        for _ in range(7):  # each generation forks in two, shorter and thinner
            lengths = length * rng.uniform(0.7, 1.2, len(angle))
            end = start + lengths[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
            steps = max(2, int(np.max(lengths) / step))
            t = np.linspace(0.0, 1.0, steps)[None, :, None]
            points.append((start[:, None] + t * (end - start)[:, None]).reshape(-1, 2))
            weights.append(np.repeat(weight * lengths / np.max(lengths), steps))
            spread = rng.uniform(0.15, 0.45, len(angle))
            angle = np.concatenate([angle - spread, angle + spread]) + rng.normal(0.0, 0.15, 2 * len(angle))
            start = np.concatenate([end, end])
            length, weight = np.concatenate([length, length]) * 0.8, weight * 0.62
        bank.append((np.concatenate(points).astype(np.float32), np.concatenate(weights).astype(np.float32)))
    return tuple(bank)


def _stamp_marker(image: Array, char: str) -> None:
    """Burn a lead side marker into an upper corner (L on the image's right, R on its left)."""
    size = image.shape[0]
    glyph = letter(char, max(1, size // 110))
    h, w = glyph.shape
    top = size // 24
    left = size - size // 12 - w if char == "L" else size // 12
    image[top : top + h, left : left + w] = np.maximum(image[top : top + h, left : left + w], 0.97 * glyph)
