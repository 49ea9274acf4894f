"""The input gate, the calibration of P(positive) and their sidecar files."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from model_fixtures import fit_tiny_gate, tiny_model
from PIL import Image

from demo import service
from rrg_core.__main__ import format_text
from rrg_core.calibration import CALIBRATION_NAME, Calibration, expected_calibration_error
from rrg_core.gate import COLOUR_REFUSAL, GATE_JSON, GATE_TENSORS, STATISTICS, Gate, image_statistics
from rrg_core.hub import named_weights
from rrg_core.negatives import KINDS, negatives
from rrg_core.observations import OBSERVATIONS
from rrg_core.phantoms import write_dataset
from rrg_core.pipeline import ReportPipeline
from rrg_core.xray_io import read_xray
from train.model_card import set_section

LR, UD = STATISTICS.index("left-right symmetry"), STATISTICS.index("top-bottom symmetry")


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A tiny model with a fitted gate and calibration, saved; and a fresh phantom (seed 13)."""
    root = tmp_path_factory.mktemp("gated")
    model = fit_tiny_gate(tiny_model()[0], root)
    model.save_pretrained(root / "weights")
    phantom = write_dataset(root / "unseen", n=1, seed=13, size=128) / "images"
    return root / "weights", read_xray(next(phantom.rglob("*.png")))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- calibration
def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) three times too sure on the logit scale, and outcomes drawn from the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.6, (n, len(OBSERVATIONS)))
    positive = rng.random(truth.shape) < truth
    logit = np.log(truth / (1 - truth))
    return 1 / (1 + np.exp(-3 * logit)), positive


def test_platt_calibration_removes_overconfidence_on_held_out_data():
    p, positive = _overconfident(seed=0)
    calibration = Calibration.fit(p, positive, fitted_on="synthetic")
    test_p, test_positive = _overconfident(seed=1)
    before = expected_calibration_error(test_p, test_positive)
    after = expected_calibration_error(calibration.calibrate_all(test_p), test_positive)
    assert before > 0.05 and after < 0.02
    a, _ = calibration.parameters["Edema"]
    assert a == pytest.approx(1 / 3, abs=0.05)


def test_calibration_is_monotone_so_thresholds_map_across():
    p, positive = _overconfident()
    calibration = Calibration.fit(p, positive, fitted_on="synthetic")
    grid = np.linspace(0.001, 0.999, 500)
    for observation in OBSERVATIONS:
        assert np.all(np.diff(calibration.calibrate(observation, grid)) > 0)
    # A raw threshold t selects exactly the studies the calibrated threshold f(t) selects.
    raw, t = p[:, 0], 0.3
    mapped = calibration.calibrate(OBSERVATIONS[0], t)
    assert isinstance(mapped, float)
    assert np.array_equal(raw >= t, calibration.calibrate(OBSERVATIONS[0], raw) >= mapped)


def test_an_observation_without_positives_still_gets_a_finite_increasing_map():
    p = np.random.default_rng(0).uniform(0, 0.2, (50, len(OBSERVATIONS)))
    calibration = Calibration.fit(p, np.zeros_like(p, dtype=bool), fitted_on="no positives")
    a, b = calibration.parameters["Fracture"]
    assert a > 0 and np.isfinite(b) and 0 < calibration.calibrate("Fracture", 0.1) < 0.1


def test_calibration_file_round_trip_missing_and_damaged(tmp_path):
    assert Calibration.load(tmp_path) is None
    p, positive = _overconfident(n=500)
    calibration = Calibration.fit(p, positive, fitted_on="here")
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration
    data = json.loads((tmp_path / CALIBRATION_NAME).read_text())
    data["parameters"]["Edema"]["a"] = -1
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"is not a valid calibration file \(every slope must be positive"):
        Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="fit it again with python -m train.fit_gate"):
        Calibration.load(tmp_path)


# ---------------------------------------------------------------- image statistics and negatives
def test_statistics_tell_an_upright_film_from_one_on_its_side(gated):
    film = gated[1].pixels
    upright = image_statistics(torch.from_numpy(film)[None])[0]
    turned = image_statistics(torch.from_numpy(np.ascontiguousarray(np.rot90(film)))[None])[0]
    assert upright[LR] > upright[UD] and turned[UD] > turned[LR]


def test_negatives_are_reproducible_cover_every_kind_and_half_are_gray():
    first = list(negatives(2 * len(KINDS), seed=3))
    again = list(negatives(2 * len(KINDS), seed=3))
    assert all(np.array_equal(a.pixels, b.pixels) for (_, a), (_, b) in zip(first, again))
    kinds = [kind for kind, _ in first]
    assert {k.removesuffix(" (gray)") for k in kinds} == set(KINDS)
    assert all(x.colour == 0 for kind, x in first if kind.endswith("(gray)"))
    assert max(x.colour for kind, x in first if kind == "scene") > 0.2


def test_colour_is_measured_when_reading_and_zero_for_gray_stored_as_rgb():
    gray = np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)
    assert read_xray(_png(np.stack([gray] * 3, -1))).colour == 0
    tinted = np.stack([gray, gray // 2, gray // 4], -1).astype(np.uint8)
    assert read_xray(_png(tinted)).colour > 0.2


# ---------------------------------------------------------------- the gate on a model
def test_a_phantom_passes_and_colour_and_non_radiographs_are_refused(gated):
    folder, phantom = gated
    model = ReportPipeline.from_pretrained(folder)
    assert model.gate is not None and model.calibration is not None
    photo = next(x for kind, x in negatives(8, seed=9) if kind == "scene")
    document = next(x for kind, x in negatives(16, seed=9) if kind == "document (gray)")
    ok, colour, text = model([phantom, photo, document], max_new_tokens=5)
    assert ok.input_check.radiograph and not ok.out_of_distribution
    assert ok.input_check.ood_score <= ok.input_check.ood_threshold
    assert (colour.input_check.radiograph, colour.input_check.refusal) == (False, COLOUR_REFUSAL)
    assert colour.out_of_distribution and text.out_of_distribution and not text.input_check.radiograph
    row = colour.to_dict()
    assert (row["out_of_distribution"], row["radiograph"], row["refusal"]) == (True, False, COLOUR_REFUSAL)
    assert row["trained_on"] == "synthetic phantoms" and row["ood_threshold"] == model.gate.threshold


def test_references_get_their_percentile_and_findings_their_calibrated_probability(gated):
    folder, phantom = gated
    model = ReportPipeline.from_pretrained(folder)
    report = model([phantom], max_new_tokens=5)[0]
    shares = [r.closer_than for r in report.references]
    assert all(0 <= s <= 1 for s in shares) and shares == sorted(shares, reverse=True)
    for row in report.findings():
        expected = model.calibration.calibrate(row["observation"], row["p_positive_raw"])
        assert row["p_positive"] == pytest.approx(expected)
    assert model.gate.closer_than(0.0) == 1.0 and model.gate.closer_than(1e9) == 0.0


def test_the_gate_scores_in_distribution_features_lower_than_shifted_ones(gated):
    model = ReportPipeline.from_pretrained(gated[0])
    gate = model.gate
    inside = gate.mean[None] + gate.scale[None] * gate.components[:1] * gate.variances[:1].sqrt()
    outside = gate.mean[None] + 20 * gate.scale[None] * torch.randn(1, len(gate.mean), generator=torch.Generator().manual_seed(0))
    assert gate.score(inside)[0] < gate.threshold < gate.score(outside)[0]


def test_weights_without_sidecars_have_no_gate_and_say_so(weights):
    model = ReportPipeline.from_pretrained(weights)
    assert model.gate is None
    report = model([np.random.default_rng(0).random((70, 70), dtype=np.float32)], max_new_tokens=5)[0]
    row = report.to_dict()
    assert report.input_check is None and row["out_of_distribution"] is None and row["ood_score"] is None
    assert all(r["closer_than"] is None for r in row["references"])
    assert all(f["p_positive"] == f["p_positive_raw"] for f in row["findings"])
    assert service.load(str(weights)).gate_note == service.NO_GATE


def test_a_damaged_or_foreign_gate_fails_with_one_sentence(gated, tmp_path, weights):
    folder = tmp_path / "w"
    shutil.copytree(gated[0], folder)
    (folder / GATE_TENSORS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"^the input gate in .* cannot be used \(.*\): delete both files"):
        ReportPipeline.from_pretrained(folder)
    # A gate fitted for other weights (here: more features than these weights have).
    other = tmp_path / "other"
    shutil.copytree(weights, other)
    gate = Gate.load(gated[0], n_features=len(ReportPipeline.from_pretrained(gated[0]).gate.mean))
    gate.mean, gate.scale = torch.zeros(999), torch.ones(999)
    gate.save(other)
    with pytest.raises(ValueError, match="fitted for 999 features"):
        ReportPipeline.from_pretrained(other)
    scalars = json.loads((folder.parent / "w" / GATE_JSON).read_text())
    scalars["format"] = "rrg-gate/0"
    (other / GATE_JSON).write_text(json.dumps(scalars))
    with pytest.raises(ValueError, match="this version reads"):
        ReportPipeline.from_pretrained(other)


# ---------------------------------------------------------------- what users read
def test_banner_withheld_draft_and_cli_warning(gated):
    folder, phantom = gated
    model = ReportPipeline.from_pretrained(folder)
    ok, photo = model([phantom, next(x for _, x in negatives(3, seed=9))], max_new_tokens=5)
    assert service.gate_banner(ok) is None and not service.withheld(ok)
    assert service.gate_banner(photo) == f"⚠️ {COLOUR_REFUSAL}" and service.withheld(photo)
    photo.input_check.radiograph, photo.input_check.refusal = True, None
    photo.input_check.ood_score = photo.input_check.ood_threshold + 1
    banner = service.gate_banner(photo)
    assert banner.startswith("⚠️ This image is unlike the images these weights were trained on (synthetic phantoms)")
    text = format_text({"file": "x.png", **photo.to_dict(), "error": None})
    assert "WARNING: this image is unlike the images these weights were trained on (synthetic phantoms" in text


def test_the_card_headline_names_the_evaluation_and_known_failures():
    headline = service.card_headline(named_weights("synthcxr"))
    assert headline.startswith("**Measured** on 300 fresh SynthCXR phantoms")
    assert "CE micro-F1 0.871" in headline and "**Known failures:** Its decoder names the wrong side" in headline


def test_set_section_replaces_or_appends(tmp_path):
    (tmp_path / "README.md").write_text("# Card\n\n## A\n\nold\n\n## B\n\nkept\n")
    set_section(tmp_path, "A", "new")
    set_section(tmp_path, "C", "appended")
    assert (tmp_path / "README.md").read_text() == "# Card\n\n## A\n\nnew\n\n## B\n\nkept\n\n## C\n\nappended\n"


# ---------------------------------------------------------------- the committed weights
WEIGHTS = named_weights("synthcxr").parent


def test_the_default_weights_pass_their_examples_and_flag_a_photo_and_a_turned_film():
    model = ReportPipeline.from_pretrained(WEIGHTS / "synthcxr")
    examples = [read_xray(p) for p in sorted((WEIGHTS.parents[1] / "assets" / "examples").glob("*.png"))]
    turned = np.ascontiguousarray(np.rot90(examples[0].pixels))
    photo = next(x for kind, x in negatives(8, seed=21) if kind == "scene")
    reports = model([*examples, turned, photo], max_new_tokens=5, min_new_tokens=1)
    *ordinary, on_side, picture = reports
    assert not any(r.out_of_distribution for r in ordinary)
    assert on_side.out_of_distribution and not picture.input_check.radiograph


@pytest.mark.real_data
def test_real_films_are_flagged_by_the_phantom_weights_and_pass_the_iu_weights(iu_xray_root):
    from rrg_core.datasets import load_split

    studies = load_split(iu_xray_root, "test")[:6]
    films = [[read_xray(p) for p in s.image_paths[:2]] for s in studies]
    phantom_weights, iu_weights = (ReportPipeline.from_pretrained(name) for name in ("synthcxr", "iu-xray-small"))
    flagged = phantom_weights([f[:1] for f in films], max_new_tokens=5, min_new_tokens=1)
    assert all(r.out_of_distribution and r.input_check.radiograph for r in flagged)
    passed = iu_weights(films, max_new_tokens=5, min_new_tokens=1)
    assert sum(r.out_of_distribution for r in passed) <= 1
