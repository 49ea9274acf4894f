"""Pure presentation of a :class:`rrg_core.Report`: heatmap overlays, tables and short texts.

No Gradio and no files here, so every function is unit-testable on plain arrays. Figures use
matplotlib's object API (``Figure`` + Agg canvas), never pyplot, because Gradio calls these from
worker threads and pyplot's global state is not thread-safe.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from rrg_core.observations import OBSERVATIONS, STATE_NAMES, State
from rrg_core.outputs import AttentionMap, Report
from rrg_core.xray_io import XRay

VIEW_NAMES: tuple[str, ...] = ("frontal", "lateral")
FINDINGS_HEADERS = ["Finding", "State (editable)", "Group", "P(pos.)", "P(unc.)", "P(neg.)", "P(not mentioned)",
                    "Map side (patient R / L)", "Decided by"]
STATE_COLUMN = 1
# What a reader may type in the state column (any unambiguous start of a word, any case).
_STATE_WORDS = {"positive": "positive", "negative": "negative", "uncertain": "uncertain",
                "blank": "blank", "not mentioned": "blank", "none": "blank"}
COLORMAP = "turbo"
# Attention is shown relative to a uniform map (1 = no preference for any place). Colours start
# above 1 and the scale reaches at least MIN_SCALE, so a near-uniform map stays near-transparent
# instead of being stretched into bright noise.
MIN_SCALE = 2.0
MAX_ALPHA = 0.6
FIGURE_WIDTH_IN = 6.4

def overlay_figure(pixels: np.ndarray, heatmap: np.ndarray, title: str) -> Figure:
    """The X-ray in gray with the attention map on top and a colour bar.

    ``heatmap`` may have another resolution than ``pixels``: both are drawn over the same extent.
    """
    height, width = pixels.shape
    ratio = heatmap.astype(np.float64) * heatmap.size
    norm = Normalize(vmin=1.0, vmax=max(float(ratio.max()), MIN_SCALE))
    alpha = MAX_ALPHA * np.clip(norm(ratio), 0.0, 1.0)
    extent = (0, width, height, 0)

    # The image gets about 85% of the width (the colour bar the rest) and 0.6 in goes to the title.
    fig = Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_WIDTH_IN * 0.85 * height / width + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, extent=extent)
    ax.imshow(ratio, cmap=COLORMAP, norm=norm, alpha=alpha, extent=extent, interpolation="bilinear")
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.set_axis_off()
    # A separate mappable: the overlay's per-pixel alpha would otherwise fade the colour bar.
    fig.colorbar(ScalarMappable(norm=norm, cmap=COLORMAP), ax=ax, shrink=0.85, label="attention ÷ uniform (1 = uniform)")
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a figure to an H x W x 3 uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def overlay(pixels: np.ndarray, heatmap: np.ndarray, title: str) -> np.ndarray:
    """:func:`overlay_figure` rendered to RGB."""
    return figure_to_rgb(overlay_figure(pixels, heatmap, title))


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
    p = report.probabilities[name][State.POSITIVE]
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
        matches = {state for word, state in _STATE_WORDS.items() if cell and word.startswith(cell)}
        if len(matches) != 1:
            raise ValueError(f"{name}: “{row[STATE_COLUMN]}” is not a state; type positive, negative, uncertain "
                             "or blank")
        overrides[name] = matches.pop()
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
