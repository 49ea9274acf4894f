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


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int16)
    return rgb.max(-1) - rgb.min(-1)


@pytest.mark.parametrize("heat_shape", [(120, 100), (30, 25)])  # the image's size, and the model grid's
def test_blend_puts_colour_where_the_attention_is(heat_shape):
    pixels = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (120, 1))
    heat = np.zeros(heat_shape, np.float32)
    heat[: heat_shape[0] // 4, : heat_shape[1] // 4] = 1.0  # top-left sixteenth of the image: 16x uniform
    heat /= heat.sum()

    rgb = rendering.blend(pixels, heat, "region", (200, 240))
    assert rgb.dtype == np.uint8 and rgb.shape == (240, 200, 3)
    box = _saturation(rgb)
    hot = box[int(240 * 0.03): int(240 * 0.2), int(200 * 0.03): int(200 * 0.2)]
    cold = box[int(240 * 0.4):, int(200 * 0.4):]
    assert hot.mean() > 50, "the attended corner should be clearly coloured"
    assert cold.max() <= 3, "unattended areas should stay gray (R = G = B)"
    gray = rendering.blend(pixels, np.full(heat_shape, 1 / heat.size, np.float32), "region", (200, 240))
    assert _saturation(gray).max() <= 3 and abs(int(gray[120, 199, 0]) - 255) <= 3 and gray[120, 0, 0] <= 3


def test_colour_scale_is_fixed_per_kind_and_logarithmic():
    ratio = np.array([0.5, 1.0, 2.0, 32.0, 64.0, 8.0])
    np.testing.assert_allclose(rendering.scale_level(ratio, "region"), [0, 0, 0.2, 1, 1, 0.6])
    np.testing.assert_allclose(rendering.scale_level(ratio, "global")[[2, 5]], [1 / 3, 1.0])
    # A place 4x uniform gets the same colour whether or not another place of the map peaks higher.
    alone, beside_a_peak = np.ones((10, 10), np.float32), np.ones((10, 10), np.float32)
    alone[0, 0] = beside_a_peak[0, 0] = 4.0
    beside_a_peak[9, 9] = 30.0
    pixels = np.full((10, 10), 0.5, np.float32)
    colours = [rendering.blend(pixels, r / r.size, "region", (10, 10))[0, 0] for r in (alone, beside_a_peak)]
    np.testing.assert_array_equal(*colours)
    assert _saturation(colours[0][None]).item() > 10


def test_colour_table_is_matplotlibs_turbo():
    from matplotlib import colormaps  # only the test needs matplotlib

    expected = colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255
    assert rendering.COLOURS.shape == (256, 3) and rendering.COLOURS.dtype == np.uint8
    assert np.abs(rendering.COLOURS - expected).max() <= 4


def _overlay(kind: str = "region", frontal: bool = True, heat=None, shape=(300, 240)) -> np.ndarray:
    pixels = np.full(shape, 0.5, np.float32)
    heat = np.full(shape, 1 / (shape[0] * shape[1]), np.float32) if heat is None else heat
    return rendering.overlay(pixels, heat, "enlarged heart, cardiomegaly", kind, frontal=frontal)


def test_overlay_is_title_image_and_the_kinds_legend_at_display_width():
    rgb = _overlay()
    legend = rendering.legend("region")
    assert rgb.dtype == np.uint8 and rgb.shape[1] == rendering.DISPLAY_SIDE == legend.shape[1]
    np.testing.assert_array_equal(rgb[-legend.shape[0]:], legend)  # the pre-rendered legend, as is
    assert not np.array_equal(rendering.legend("global"), legend)  # one scale per kind
    assert rendering.legend("global") is rendering.legend("global")  # rendered once
    image_rows = rgb.shape[0] - legend.shape[0]
    assert image_rows > rendering.DISPLAY_SIDE  # the 300 x 240 film fills 640 rows, the title sits on top
    # the film is scaled to fit, centred: 240 * 640 / 300 = 512 columns of gray between white margins
    row = rgb[image_rows - 2]
    assert (row[:60] == 255).all() and (row[-60:] == 255).all() and abs(int(row[320, 0]) - 128) <= 1


def _marker_pixels(rgb: np.ndarray, columns: slice) -> int:
    """White (marker) pixels in the top corner band of the film (gray 128 everywhere else)."""
    top = rgb.shape[0] - rendering.legend("region").shape[0] - rendering.DISPLAY_SIDE
    band = rgb[top: top + 40, columns]
    return int((band.min(-1) > 240).sum())


def test_frontal_overlays_mark_the_patients_right_on_the_images_left():
    shape = (300, 300)  # square: the film spans the whole width
    frontal, lateral = _overlay(frontal=True, shape=shape), _overlay(frontal=False, shape=shape)
    assert _marker_pixels(frontal, slice(0, 40)) > 20 and _marker_pixels(frontal, slice(-40, None)) > 20
    assert _marker_pixels(lateral, slice(0, 40)) == _marker_pixels(lateral, slice(-40, None)) == 0
    # the two corners hold different letters: "R" left, "L" right
    left = frontal[:, :40].astype(int)
    right = frontal[:, -40:][:, ::-1].astype(int)
    assert not np.array_equal(left, right)


def test_a_near_uniform_map_adds_no_colour_and_says_so():
    rgb = _overlay(shape=(300, 300))
    legend_rows = rendering.legend("region").shape[0]
    film = rgb[rgb.shape[0] - legend_rows - rendering.DISPLAY_SIDE: -legend_rows]
    assert _saturation(film[40:]).max() <= 3  # below the R / L markers
    assert rendering.caption("trachea", _uniform()) == "trachea · peak 1.0x uniform (near-uniform: no place stands out)"
    peaked = np.ones((20, 20), np.float32)
    peaked[0, 0] = 41.0
    assert rendering.caption("trachea", peaked / peaked.sum()) == "trachea · peak 37.3x uniform"  # 41 / 440 * 400


def test_findings_table_widths_cover_every_column():
    widths = rendering.column_widths(rendering.FINDINGS_HEADERS)
    assert len(widths) == len(rendering.FINDINGS_HEADERS)
    assert sum(float(w.rstrip("%")) for w in widths) == pytest.approx(100, abs=0.5)
    more = rendering.column_widths([*rendering.FINDINGS_HEADERS, "A column added later"])
    assert len(more) == len(rendering.FINDINGS_HEADERS) + 1 and float(more[0][:-1]) > float(more[-1][:-1])


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


def test_a_maps_label_quotes_the_p_positive_the_findings_table_shows():
    """With a calibration the table shows calibrated P(positive); a map's label must quote the
    same number, not the model's raw one."""
    report = _report()
    report.calibrated = {o: 0.5 * report.probabilities[o][State.POSITIVE] for o in OBSERVATIONS}
    label = next(label for label, _ in rendering.heatmap_choices(report) if label.startswith("Cardiomegaly"))
    row = next(r for r in rendering.findings_table(report) if r[0] == "Cardiomegaly")
    assert row[3] == pytest.approx(0.45) and "P(positive) 0.45 " in label


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
    assert rendering.edited_states(report, rows) == {"Cardiomegaly": "negative", "Pneumothorax": "not mentioned"}
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
