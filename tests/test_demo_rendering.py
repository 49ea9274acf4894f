"""Unit tests of the demo's pure parts: overlays, map order, tables (demo.rendering) and the
service helpers that need no model (model card, downloads, outbox, reading uploads)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from demo import rendering, service
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.outputs import AttentionMap, Reference, Report
from rrg_core.prompts import FINDING_PROMPTS
from rrg_core.xray_io import UnreadableImage, XRay


def _probabilities(p_positive: dict[str, float]) -> dict[str, list[float]]:
    """Four-state probabilities with the given P(positive); the rest split evenly."""
    out = {}
    for name in OBSERVATIONS:
        p = p_positive.get(name, 0.05)
        out[name] = [(1 - p) / 3, p, (1 - p) / 3, (1 - p) / 3]
    return out


def _states(**named: State) -> list[int]:
    return [int(named.get(name.replace(" ", "_"), State.BLANK)) for name in OBSERVATIONS]


def _uniform(shape=(40, 50)) -> np.ndarray:
    return np.full(shape, 1 / (shape[0] * shape[1]), np.float32)


def _report(views: int = 1) -> Report:
    observations = ["Pneumothorax", None, "Cardiomegaly", "Pleural Effusion"]
    prompts = [FINDING_PROMPTS[o] if o else "right hilum" for o in observations]
    attention = [
        AttentionMap(p, "region", _uniform(), view=v, observation=o)
        for v in range(views)
        for p, o in zip(prompts, observations)
    ]
    attention += [AttentionMap("retrieved reference report", "global", _uniform(), view=v) for v in range(views)]
    return Report(
        text="the heart is enlarged . small left pleural effusion .",
        probabilities=_probabilities({"Cardiomegaly": 0.9, "Pleural Effusion": 0.7, "Pneumothorax": 0.2, "Edema": 0.4}),
        states=_states(Cardiomegaly=State.POSITIVE, Pleural_Effusion=State.POSITIVE, Pneumothorax=State.NEGATIVE,
                       Edema=State.UNCERTAIN),
        references=[
            Reference("s7", 0.1234567, _states(Cardiomegaly=State.POSITIVE, Edema=State.UNCERTAIN), "cardiomegaly . " * 40,
                      is_global_prompt=True),
            Reference("s3", 0.25, _states(No_Finding=State.POSITIVE), None),
        ],
        attention=attention,
    )


# ---------------------------------------------------------------- overlays


def _image_box(fig) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows/columns of the X-ray axes in the rendered figure."""
    x0, y0, x1, y1 = fig.axes[0].get_window_extent().extents
    height = fig.canvas.get_width_height()[1]
    return int(height - y1), int(height - y0), int(x0), int(x1)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int16)
    return rgb.max(-1) - rgb.min(-1)


@pytest.mark.parametrize("heat_shape", [(120, 100), (30, 25)])  # the image's size, and the model grid's
def test_overlay_puts_colour_where_the_attention_is(heat_shape):
    pixels = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (120, 1))
    heat = np.zeros(heat_shape, np.float32)
    heat[: heat_shape[0] // 4, : heat_shape[1] // 4] = 1.0  # top-left sixteenth of the image
    heat /= heat.sum()

    fig = rendering.overlay_figure(pixels, heat, "pleural effusion")
    rgb = rendering.figure_to_rgb(fig)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    top, bottom, left, right = _image_box(fig)
    box = _saturation(rgb[top:bottom, left:right])
    h, w = box.shape
    hot = box[int(h * 0.03): int(h * 0.2), int(w * 0.03): int(w * 0.2)]
    cold = box[int(h * 0.4):, int(w * 0.4):]
    assert hot.mean() > 50, "the attended corner should be clearly coloured"
    assert cold.max() <= 3, "unattended areas should stay gray (R = G = B)"


def test_overlay_has_a_colour_bar_in_units_of_uniform_attention_and_the_prompt_as_title():
    heat = np.ones((20, 20), np.float32)
    heat[5, 5] = 31.0  # 31 / 430 * 400 = 28.8 times uniform at the peak
    heat /= heat.sum()
    fig = rendering.overlay_figure(np.zeros((20, 20), np.float32), heat, "enlarged heart, cardiomegaly")
    assert len(fig.axes) == 2
    colorbar_axes = fig.axes[1]
    assert "uniform" in colorbar_axes.get_ylabel()
    low, high = colorbar_axes.get_ylim()
    assert low == pytest.approx(1.0)
    assert high == pytest.approx(31 / 430 * 400, rel=1e-4)
    assert fig.axes[0].get_title() == "enlarged heart, cardiomegaly"


def test_a_uniform_map_adds_no_colour_and_keeps_a_minimum_scale():
    fig = rendering.overlay_figure(np.full((30, 30), 0.5, np.float32), _uniform((30, 30)), "trachea")
    assert fig.axes[1].get_ylim()[1] == pytest.approx(rendering.MIN_SCALE)
    top, bottom, left, right = _image_box(fig)
    assert _saturation(rendering.figure_to_rgb(fig)[top:bottom, left:right]).max() <= 3


# ---------------------------------------------------------------- map order


def test_heatmap_choices_put_positive_findings_first_then_global_then_other_findings_then_regions():
    report = _report()
    choices = rendering.heatmap_choices(report)
    prompts = [report.attention[i].prompt for _, i in choices]
    assert prompts == [
        FINDING_PROMPTS["Cardiomegaly"],  # positive, p 0.9
        FINDING_PROMPTS["Pleural Effusion"],  # positive, p 0.7
        "retrieved reference report",  # the global prompt
        FINDING_PROMPTS["Pneumothorax"],  # a finding predicted negative
        "right hilum",  # a region
    ]
    labels = [label for label, _ in choices]
    assert labels[0].startswith("Cardiomegaly: positive, P(positive) 0.90")
    assert labels[2] == "Global reference prompt: retrieved report s7"
    assert labels[4] == "Region: right hilum"


def test_heatmap_choices_name_the_view_when_there_are_two():
    report = _report(views=2)
    choices = rendering.heatmap_choices(report)
    assert len(choices) == len(report.attention) == 10
    first_two = [(report.attention[i].prompt, report.attention[i].view) for _, i in choices[:2]]
    assert first_two == [(FINDING_PROMPTS["Cardiomegaly"], 0), (FINDING_PROMPTS["Cardiomegaly"], 1)]
    assert choices[0][0].endswith("· frontal view") and choices[1][0].endswith("· lateral view")


# ---------------------------------------------------------------- tables


def test_findings_table_has_every_observation_sorted_by_probability_with_state_and_group():
    rows = rendering.findings_table(_report())
    assert len(rows) == len(OBSERVATIONS) and len(rows[0]) == len(rendering.FINDINGS_HEADERS)
    assert [r[0] for r in rows[:4]] == ["Cardiomegaly", "Pleural Effusion", "Edema", "Pneumothorax"]
    assert rows[0] == ["Cardiomegaly", "positive", "head", 0.9, 0.033, 0.033, 0.033, "R 50 % / L 50 %", ""]
    assert rows[2][0] == "Edema" and rows[2][7] == ""  # no map for Edema in this report
    assert rows[2][1:3] == ["uncertain", "head"] and rows[3][1:3] == ["negative", "tail"]
    p_positive = [r[3] for r in rows]
    assert p_positive == sorted(p_positive, reverse=True)


def test_the_reader_edits_states_in_the_table():
    report = _report()
    rows = rendering.findings_table(report)
    rows[0][rendering.STATE_COLUMN] = "NEG"  # any unambiguous start of a state, any case
    rows[3][rendering.STATE_COLUMN] = "not mentioned"
    assert rendering.edited_states(report, rows) == {"Cardiomegaly": "negative", "Pneumothorax": "blank"}
    rows[1][rendering.STATE_COLUMN] = "maybe"
    with pytest.raises(ValueError, match="“maybe” is not a state"):
        rendering.edited_states(report, rows)


def test_references_table_shows_distance_marks_the_global_prompt_and_lists_positives():
    rows = rendering.references_table(_report(), text_chars=60)
    assert [r[:4] for r in rows] == [[1, "s7", 0.1235, "★ global prompt"], [2, "s3", 0.25, ""]]
    assert rows[0][4] == "Cardiomegaly; uncertain: Edema"
    assert rows[1][4] == "No Finding"
    assert rows[0][5].startswith("cardiomegaly . cardiomegaly") and rows[0][5].endswith("…") and len(rows[0][5]) <= 60
    assert rows[1][5] == "(text not available)"
    assert [r[6] for r in rows] == ["no scale (no gate)"] * 2
    assert rendering.reference_headers("hyperbolic")[2] == "Distance (hyperbolic)"


def test_xray_info_lists_format_size_safe_metadata_and_notes():
    xray = XRay(np.zeros((300, 200), np.float32), "dicom",
                {"modality": "DX", "view_position": "PA", "width": 200, "height": 300, "pixel_spacing_mm": (0.2, 0.2)},
                ["inverted MONOCHROME1 so that dense structures are bright"])
    text = rendering.xray_info([xray, XRay(np.zeros((10, 10), np.float32), "png")])
    assert text.startswith("**Frontal view**: DICOM, 200 × 300 px; modality DX; view position PA; pixel spacing mm 0.2 × 0.2")
    assert "width" not in text and "\n- inverted MONOCHROME1" in text
    assert text.endswith("**Lateral view**: PNG, 10 × 10 px")


# ---------------------------------------------------------------- service helpers (no model)


def test_model_card_summary_reads_first_paragraph_and_training_data(tmp_path):
    assert service.model_card_summary(tmp_path) == "no model card"
    (tmp_path / "README.md").write_text(
        "---\nlicense: apache-2.0\ndatasets:\n- synthcxr\n---\n# REVTAF SynthCXR\n\n"
        "Small REVTAF weights for the demo.\nTrained on CPU.\n\n## Training data\n\n2,000 SynthCXR phantoms (seed 0).\n"
    )
    summary = service.model_card_summary(tmp_path)
    assert summary == "Small REVTAF weights for the demo. Trained on CPU.\n\n**Training data:** 2,000 SynthCXR phantoms (seed 0)."
    (tmp_path / "README.md").write_text("---\ndatasets:\n- synthcxr\n---\nWeights.\n")
    assert service.model_card_summary(tmp_path) == "Weights.\n\n**Training data:** synthcxr"
    (tmp_path / "README.md").write_text("# Weights\n\n**Training data:** IU X-Ray train split.\n")
    assert service.model_card_summary(tmp_path) == "**Training data:** IU X-Ray train split."


def _result(text: str = "no acute disease .") -> service.Result:
    report = _report()
    report.text = text
    return service.Result(report, [], "org/repo@v1", "2025-01-02T03:04:05+00:00", [])


def test_downloads_hold_the_edited_text_the_draft_and_provenance_and_are_pruned(tmp_path):
    outbox = service.Outbox(tmp_path, max_age_s=60)
    txt, js = outbox.export(service.evidence(_result()), "no acute cardiopulmonary disease .")
    assert txt.name == "rrg-report-2025-01-02T030405Z.txt"
    assert txt.read_text().endswith("\n\nno acute cardiopulmonary disease .\n")
    assert service.DISCLAIMER in txt.read_text()
    payload = json.loads(js.read_text())
    assert payload["report"] == "no acute cardiopulmonary disease ." and payload["draft"] == "no acute disease ."
    assert payload["edited"] is True and payload["weights"] == "org/repo@v1"
    assert payload["generated_at"] == "2025-01-02T03:04:05+00:00"
    assert [f["observation"] for f in payload["findings"][:2]] == ["Cardiomegaly", "Pleural Effusion"]
    assert payload["references"][0]["study_id"] == "s7"

    old = time.time() - 120
    os.utime(txt.parent, (old, old))
    newer, _ = outbox.export(service.evidence(_result()), "x")
    assert not txt.exists() and newer.exists()


def test_read_views_names_the_failing_view_and_asks_for_a_frontal(tmp_path):
    good, bad = tmp_path / "f.png", tmp_path / "l.png"
    Image.fromarray(np.tile(np.arange(128, dtype=np.uint8), (96, 1))).save(good)
    bad.write_text("not an image at all")
    held = {str(p): p.read_bytes() for p in (good, bad)}
    views = service.read_views(str(good), None, held.get)
    assert len(views) == 1 and views[0].pixels.shape == (96, 128)
    assert views[0].pixels[0, 127] == pytest.approx(127 / 255)
    with pytest.raises(UnreadableImage, match="^Lateral view: This is a text file"):
        service.read_views(str(good), str(bad), held.get)
    with pytest.raises(UnreadableImage, match="Upload a frontal"):
        service.read_views(None, str(good), held.get)
    with pytest.raises(UnreadableImage, match="upload it again"):
        service.read_views(str(tmp_path / "gone.png"), None, held.get)