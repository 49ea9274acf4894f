"""Pure presentation of a :class:`rrg_core.Report`: heatmap overlays, tables and short texts.

No Gradio and no files here, so every function is unit-testable on plain arrays. Overlays are a
colour look-up and an alpha blend at display size (numpy + Pillow, a few ms each): matplotlib
took about 130 ms per overlay and stays for the figures in docs and model cards.

Attention is shown relative to a uniform map (1 = no preference for any place) on one fixed,
logarithmic colour scale per map kind, so colours mean the same on every map of a kind and one
pre-rendered legend per kind explains them; a near-uniform map stays near-transparent instead of
being stretched into bright noise.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rrg_core.observations import OBSERVATIONS, STATE_NAMES, State, state_from_word
from rrg_core.outputs import AttentionMap, Report, peak_ratio
from rrg_core.xray_io import XRay, to_uint8

VIEW_NAMES: tuple[str, ...] = ("frontal", "lateral")
FINDINGS_HEADERS = ["Finding", "State (editable)", "Group", "P(pos.)", "P(unc.)", "P(neg.)", "P(not mentioned)",
                    "Map side (patient R / L)", "Decided by"]
STATE_COLUMN = 1
# Relative widths of the columns that need more room than a number; any other column gets 1.
WIDE_COLUMNS = {"Finding": 2.2, "State (editable)": 1.4, "P(not mentioned)": 1.3, "Map side (patient R / L)": 1.6,
                "Decided by": 2.2}
# Top of each map kind's colour scale, in multiples of uniform attention. Measured peaks: region
# maps of the SynthCXR weights 2-34x, of the IU X-Ray weights 1.1-2.5x; global maps of both 1.0x.
SCALE_TOP = {"region": 32.0, "global": 8.0}
SCALE_NAMES = {"region": "finding and region maps", "global": "global prompt maps"}
NEAR_UNIFORM = 2.0  # a map whose peak is below this many times uniform is near-uniform (drawn without colour)
MAX_ALPHA = 0.6
DISPLAY_SIDE = 640  # overlays are drawn this wide; the X-ray fits in a DISPLAY_SIDE square
FONT_PX, MARKER_PX = 16, 24
BACKGROUND = 255
# matplotlib's "turbo" at 33 evenly spaced points (interpolated: within 4/255 of the original).
_TURBO = ("30123b 392a73 4040a2 4456c7 466be3 4680f6 4294ff 37a8fa 28bceb 1ccdd8 18ddc2 1fe9af 32f298 4ef97d "
          "6dfe62 8bff4b a4fc3c b9f635 cdec34 dfdf37 eecf3a f8be39 fdac34 fe962b fb7e21 f46617 eb500e df3f08 "
          "d02f05 be2102 a91601 920b01 7a0403")


def _colour_table() -> np.ndarray:
    anchors = np.array([list(bytes.fromhex(h)) for h in _TURBO.split()], np.float64)  # [33, 3]
    x, at = np.linspace(0, 1, 256), np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(x, at, anchors[:, c]) for c in range(3)], 1).round().astype(np.uint8)


COLOURS = _colour_table()  # [256, 3] uint8
_ALPHA = [round(MAX_ALPHA * i) for i in range(256)]  # colour level -> opacity (0..255)


def scale_level(ratio: np.ndarray, kind: str) -> np.ndarray:
    """Position on the kind's colour scale, 0 (uniform or less) .. 1 (its top), log-spaced."""
    return np.clip(np.log(np.maximum(ratio, 1.0)) / np.log(SCALE_TOP[kind]), 0.0, 1.0)


def blend(pixels: np.ndarray, heatmap: np.ndarray, kind: str, size: tuple[int, int]) -> np.ndarray:
    """The X-ray in gray with the map's colour on top, ``size`` = (width, height): uint8 H x W x 3.

    ``heatmap`` (summing to 1) may have another resolution than ``pixels``: both are resized to
    ``size`` first, and the look-up and blend run in Pillow's C loops (numpy's took 4x longer).
    """
    gray = Image.fromarray(to_uint8(_resized(pixels, size)), "L").convert("RGB")
    level = np.rint(scale_level(_resized(heatmap * heatmap.size, size), kind) * 255).astype(np.uint8)
    colour = Image.fromarray(level, "P")
    colour.putpalette(COLOURS.tobytes())
    alpha = Image.fromarray(level, "L").point(_ALPHA)
    return np.asarray(Image.composite(colour.convert("RGB"), gray, alpha))


def _resized(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float H x W array resized bilinearly (antialiased when shrinking) to ``size`` = (width, height)."""
    return np.asarray(Image.fromarray(np.asarray(values, np.float32), "F").resize(size, Image.Resampling.BILINEAR))


def overlay(pixels: np.ndarray, heatmap: np.ndarray, title: str, kind: str = "region", frontal: bool = True) -> np.ndarray:
    """One attention map as the page shows it: title, the blended X-ray (R and L markers on a frontal
    view: the patient's right is on the image's left) and the kind's legend, uint8 H x W x 3."""
    height, width = pixels.shape
    fit = DISPLAY_SIDE / max(height, width)
    size = (max(1, round(width * fit)), max(1, round(height * fit)))
    image = Image.fromarray(blend(pixels, heatmap, kind, size))
    if frontal:
        _mark_sides(image)
    banner = _text_block(caption(title, heatmap))
    canvas = Image.new("RGB", (DISPLAY_SIDE, banner.height + size[1]), (BACKGROUND,) * 3)
    canvas.paste(banner, (0, 0))
    canvas.paste(image, ((DISPLAY_SIDE - size[0]) // 2, banner.height))
    return np.concatenate([np.asarray(canvas), legend(kind)])


def caption(title: str, heatmap: np.ndarray) -> str:
    """The overlay's title with the map's peak, which says when the map is near-uniform."""
    peak = peak_ratio(heatmap)
    return f"{title} · peak {peak:.1f}x uniform" + (" (near-uniform: no place stands out)" if peak < NEAR_UNIFORM else "")


def _mark_sides(image: Image.Image) -> None:
    """'R' in the top-left and 'L' in the top-right corner, white with a dark outline."""
    draw, font, margin = ImageDraw.Draw(image), _font(MARKER_PX), MARKER_PX // 3
    for letter, anchor, x in (("R", "la", margin), ("L", "ra", image.width - margin)):
        draw.text((x, margin), letter, fill="white", font=font, anchor=anchor, stroke_width=2, stroke_fill="black")


@cache
def legend(kind: str) -> np.ndarray:
    """The colour scale of one map kind, DISPLAY_SIDE wide (rendered once per kind)."""
    top, margin, bar_height = SCALE_TOP[kind], 16, 14
    caption = _text_block(f"Colour: attention / uniform on {SCALE_NAMES[kind]} (1x = no preference, transparent; "
                          f"log scale to {top:g}x, more opaque as it rises). R / L on frontal views: the patient's "
                          "right / left.")
    bar_width = DISPLAY_SIDE - 2 * margin
    bar = COLOURS[np.rint(np.linspace(0, 255, bar_width)).astype(np.uint8)]
    strip = Image.new("RGB", (DISPLAY_SIDE, caption.height + bar_height + FONT_PX + 8), (BACKGROUND,) * 3)
    strip.paste(caption, (0, 0))
    strip.paste(Image.fromarray(np.repeat(bar[None], bar_height, 0)), (margin, caption.height))
    draw, font = ImageDraw.Draw(strip), _font(FONT_PX - 2)
    ticks = 2.0 ** np.arange(0, np.log2(top) + 1e-9)
    for tick in ticks:
        x = margin + round(float(np.log(tick) / np.log(top)) * (bar_width - 1))
        anchor = "la" if tick == ticks[0] else "ra" if tick == ticks[-1] else "ma"
        draw.text((x, caption.height + bar_height + 2), f"{tick:g}x", fill="black", font=font, anchor=anchor)
    return np.asarray(strip)


def _text_block(text: str) -> Image.Image:
    """``text`` wrapped to DISPLAY_SIDE, black on the background."""
    lines = textwrap.wrap(text, DISPLAY_SIDE // (FONT_PX // 2 + 1)) or [""]
    line_px = FONT_PX + 4
    block = Image.new("RGB", (DISPLAY_SIDE, line_px * len(lines) + 8), (BACKGROUND,) * 3)
    draw, font = ImageDraw.Draw(block), _font(FONT_PX)
    for i, line in enumerate(lines):
        draw.text((DISPLAY_SIDE // 2, 4 + i * line_px), line, fill="black", font=font, anchor="ma")
    return block


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def column_widths(headers: Sequence[str]) -> list[str]:
    """Percentage widths for a table's columns (WIDE_COLUMNS, else 1 each), one per header, summing to 100."""
    weights = [WIDE_COLUMNS.get(h, 1.0) for h in headers]
    return [f"{100 * w / sum(weights):.1f}%" for w in weights]


def heatmap_choices(report: Report) -> list[tuple[str, int]]:
    """(label, index into ``report.attention``) for every map, in reading order: predicted-positive
    findings (most probable first), the global reference prompt, the other findings, the regions."""
    described = [(*_describe(report, amap), i) for i, amap in enumerate(report.attention)]
    two_views = len({amap.view for amap in report.attention}) > 1
    ordered = sorted(described, key=lambda d: (d[0], -d[1], report.attention[d[3]].view, d[3]))
    return [
        (f"{label} · {VIEW_NAMES[report.attention[i].view]} view" if two_views else label, i)
        for _, _, label, i in ordered
    ]


def _describe(report: Report, amap: AttentionMap) -> tuple[int, float, str]:
    """(tier, P(positive), label) of one map; tiers order the choices."""
    if amap.kind == "global":
        top = next((r.study_id for r in report.references if r.is_global_prompt), None)
        return 1, 0.0, "Global reference prompt: retrieved report" + (f" {top}" if top else "")
    name = amap.observation
    if name is None:
        return 3, 0.0, f"Region: {amap.prompt}"
    p = report.p_positive(name)
    state = report.states[OBSERVATIONS.index(name)]
    tier = 0 if state == State.POSITIVE else 2
    return tier, p, f"{name}: {STATE_NAMES[state]}, P(positive) {p:.2f} (prompt “{amap.prompt}”)"


def findings_table(report: Report) -> list[list]:
    """One row per observation, most probably positive first (columns: FINDINGS_HEADERS)."""
    return [
        [
            row["observation"],
            row["state"],
            row["group"],
            round(row["p_positive"], 3),
            round(row["p_uncertain"], 3),
            round(row["p_negative"], 3),
            round(row["p_not_mentioned"], 3),
            _sides(row["map_right_share"]),
            row["decision_rule"] or "",
        ]
        for row in report.findings()
    ]


def edited_states(report: Report, rows: Sequence[Sequence]) -> dict[str, str]:
    """The reader's overrides after editing the findings table: the report's earlier overrides
    plus every row whose state cell now differs from the state shown. Raises ValueError with a
    sentence for a cell that names no state."""
    shown = {name: STATE_NAMES[state] for name, state in zip(OBSERVATIONS, report.states)}
    overrides = dict(report.overrides)
    for row in rows:
        name, cell = str(row[0]), str(row[STATE_COLUMN]).strip().lower()
        if name not in shown or cell == shown[name]:
            continue
        state = state_from_word(cell)
        if state is None:
            raise ValueError(f"{name}: “{row[STATE_COLUMN]}” is not a state; type positive, negative, uncertain "
                             "or blank")
        overrides[name] = STATE_NAMES[state]
    return overrides


def _sides(right: float | None) -> str:
    """'R 80 % / L 20 %': where the finding's frontal map lies (patient's sides); '' without a map."""
    return "" if right is None else f"R {100 * right:.0f} % / L {100 * (1 - right):.0f} %"


def reference_headers(metric: str) -> list[str]:
    return ["Rank", "Study", f"Distance ({metric})", "Global prompt", "Positive findings", "Report",
            "Closer than (share of typical matches)"]


def references_table(report: Report, text_chars: int = 240) -> list[list]:
    """One row per retrieved reference, nearest first (columns: :func:`reference_headers`)."""
    return [
        [
            rank,
            ref.study_id,
            round(ref.distance, 4),
            "★ global prompt" if ref.is_global_prompt else "",
            _positives(ref.label_states),
            textwrap.shorten(ref.text, text_chars, placeholder=" …") if ref.text else "(text not available)",
            "no scale (no gate)" if ref.closer_than is None else f"{100 * ref.closer_than:.0f} %",
        ]
        for rank, ref in enumerate(report.references, start=1)
    ]


def _positives(states: Sequence[int]) -> str:
    positive = [name for name, s in zip(OBSERVATIONS, states) if s == State.POSITIVE]
    uncertain = [name for name, s in zip(OBSERVATIONS, states) if s == State.UNCERTAIN]
    text = ", ".join(positive) or "none"
    return f"{text}; uncertain: {', '.join(uncertain)}" if uncertain else text


def xray_info(views: Sequence[XRay]) -> str:
    """Markdown: per view, the format, size, safe metadata and the reader's notes."""
    blocks = []
    for name, xray in zip(VIEW_NAMES, views):
        height, width = xray.pixels.shape
        fields = [f"{xray.source_format.upper()}, {width} × {height} px"]
        fields += [
            f"{key.replace('_', ' ')} {' × '.join(map(str, value)) if isinstance(value, tuple) else value}"
            for key, value in xray.metadata.items()
            if key not in ("width", "height") and value not in (None, "")
        ]
        lines = [f"**{name.capitalize()} view**: " + "; ".join(fields)]
        lines += [f"- {note}" for note in xray.notes]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
