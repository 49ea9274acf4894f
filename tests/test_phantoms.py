"""SynthCXR: determinism, anatomy, findings against their masks, labels against the report, files."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from PIL import Image

from rrg_core.observations import OBSERVATIONS, PATHOLOGIES
from rrg_core.phantoms import (
    DEFAULT_PREVALENCE,
    PhantomConfig,
    make_phantom,
    random_finding,
    sample_findings,
    write_dataset,
    write_report,
)
from rrg_core.phantoms.__main__ import main as cli
from rrg_core.phantoms.anatomy import build_scene, compose, sample_anatomy
from rrg_core.phantoms.findings import DEVICES

SMALL = PhantomConfig(size=128)


def _finding(observation: str, seed: int, kind: str | None = None):
    """A clearly present finding (moderate severity) of one observation."""
    return replace(random_finding(observation, np.random.default_rng([seed, 17]), kind=kind), severity="moderate")


def test_same_seed_and_index_give_the_same_phantom():
    a, b = make_phantom(3, 5), make_phantom(3, 5)
    assert a.study_id == b.study_id == "synth-3-000005"
    assert np.array_equal(a.image, b.image)
    assert (a.report, a.labels) == (b.report, b.labels)
    assert a.masks.keys() == b.masks.keys()
    assert all(np.array_equal(x, y) for k in a.masks for x, y in zip(a.masks[k], b.masks[k]))
    c = make_phantom(3, 6)
    assert np.abs(a.image - c.image).mean() > 0.01
    assert make_phantom(4, 5).report != a.report or not np.array_equal(make_phantom(4, 5).image, a.image)


def test_image_is_a_float_radiograph_in_display_polarity():
    phantom = make_phantom(0, 1, PhantomConfig(size=192))
    image = phantom.image
    assert image.dtype == np.float32 and image.shape == (192, 192)
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.1

    anatomy = sample_anatomy(np.random.default_rng([0, 9]), 256)
    scene = build_scene(anatomy)
    image = compose(scene)
    lungs = (scene.lung["right"] + scene.lung["left"] > 0.95) & (scene.heart < 0.05)
    heart = (scene.heart > 0.95) & (scene.Y < anatomy.dome[1] - 0.02)
    assert image[lungs].mean() < image[heart].mean() - 0.2  # air dark, heart bright
    # radiological convention: the heart bulges to the image's right (the patient's left)
    columns = np.nonzero(heart)[1]
    assert columns.mean() > 128 and columns.max() - 128 > 2 * (128 - columns.min())
    # the right lung is on the image's left
    assert np.nonzero(scene.lung["right"] > 0.5)[1].mean() < 100 < 156 < np.nonzero(scene.lung["left"] > 0.5)[1].mean()


def _cardiothoracic_ratio(scene) -> float:
    """Widest heart row over widest thorax (lung fields), as a radiologist measures it."""
    heart = scene.heart > 0.5
    lungs = (scene.lung["right"] > 0.5) | (scene.lung["left"] > 0.5)
    above = scene.Y < scene.anatomy.dome[1] + 0.03
    heart_width = max(np.ptp(np.nonzero(row)[0]) for row in heart & above if row.any())
    cols = np.nonzero(lungs.any(axis=0))[0]
    return heart_width / np.ptp(cols)


def test_cardiomegaly_raises_the_cardiothoracic_ratio_by_grade():
    from rrg_core.phantoms.findings import adjust_anatomy

    anatomy = sample_anatomy(np.random.default_rng([1, 2]), 256)
    ratios = [_cardiothoracic_ratio(build_scene(anatomy))]
    for severity in ("mild", "moderate", "severe"):
        finding = replace(random_finding("Cardiomegaly", np.random.default_rng(5)), severity=severity)
        ratios.append(_cardiothoracic_ratio(build_scene(adjust_anatomy(anatomy, [finding]))))
    assert ratios[0] < 0.5 < ratios[1] < ratios[2] < ratios[3]


CASES = [(o, None) for o in OBSERVATIONS if o not in ("Support Devices", "No Finding")] + [
    ("Support Devices", d) for d in DEVICES
] + [("Lung Lesion", "mass"), ("Pleural Other", "plaques"), ("Pleural Other", "apical"), ("Fracture", "healing")]


@pytest.mark.parametrize("observation,kind", CASES)
def test_each_finding_changes_the_image_where_its_mask_is(observation, kind):
    seed = OBSERVATIONS.index(observation)
    finding = _finding(observation, seed, kind)
    without = make_phantom(seed, 3, SMALL, findings=[])
    with_ = make_phantom(seed, 3, SMALL, findings=[finding])
    assert without.labels["No Finding"] == 1 and not without.masks
    assert with_.labels[observation] == 1
    masks = with_.masks[observation]
    assert masks and all(m.dtype == bool and m.shape == (128, 128) and m.any() for m in masks)
    inside = np.logical_or.reduce(masks)
    change = np.abs(with_.image - without.image)
    assert change[inside].mean() > 0.01
    assert change[inside].mean() > 10 * change[~inside].mean()


def test_masks_cover_every_stated_finding_and_nothing_else():
    checked = 0
    for index in range(60):
        phantom = make_phantom(8, index, SMALL)
        present = {o for o, v in phantom.labels.items() if v in (1, -1) and o != "No Finding"}
        assert set(phantom.masks) == present
        for instances in phantom.masks.values():
            assert all(m.shape == phantom.image.shape and m.any() and not m.all() for m in instances)
        checked += len(present)
    assert checked > 30


def test_hedged_findings_are_rendered_subtly_and_hedged_in_the_report():
    finding = replace(_finding("Pleural Effusion", 2), certainty=-1, severity="mild", side="left")
    phantom = make_phantom(2, 4, SMALL, findings=[finding])
    assert phantom.labels["Pleural Effusion"] == -1 and phantom.labels["No Finding"] is None
    assert len(phantom.masks["Pleural Effusion"]) == 1
    assert any(w in phantom.report.lower() for w in ("possible", "not excluded", "may represent"))


def test_bilateral_findings_have_one_mask_per_side():
    finding = replace(_finding("Pleural Effusion", 1), side="bilateral")
    phantom = make_phantom(1, 2, SMALL, findings=[finding])
    right, left = phantom.masks["Pleural Effusion"]
    assert np.nonzero(right)[1].mean() < 64 < np.nonzero(left)[1].mean()
    assert "bilateral" in phantom.report


def test_no_finding_excludes_pathologies_but_not_devices():
    phantom = make_phantom(0, 0, SMALL, findings=[_finding("Support Devices", 0, "pacemaker")])
    assert phantom.labels["No Finding"] == 1 and phantom.labels["Support Devices"] == 1
    assert all(phantom.labels[p] in (0, None) for p in PATHOLOGIES)
    normal = make_phantom(0, 0, SMALL, findings=[])
    assert "clear" in normal.report and normal.labels["No Finding"] == 1


def test_prevalence_follows_the_config():
    def shares(config: PhantomConfig, n: int = 800) -> dict[str, float]:
        counts = dict.fromkeys(OBSERVATIONS, 0)
        for i in range(n):
            findings = sample_findings(np.random.default_rng([21, i]), config)
            for o in {f.observation for f in findings}:
                counts[o] += 1
            counts["No Finding"] += not any(f.observation in PATHOLOGIES for f in findings)
        return {o: c / n for o, c in counts.items()}

    observed = shares(PhantomConfig())
    for name, p in DEFAULT_PREVALENCE.items():
        assert abs(observed[name] - p) < 3 * np.sqrt(p * (1 - p) / 800) + 0.015, (name, observed[name], p)
    skewed = shares(PhantomConfig(prevalence={"Pneumothorax": 0.4, "Cardiomegaly": 0.0, "No Finding": 0.1}))
    assert abs(skewed["Pneumothorax"] - 0.4) < 0.06 and skewed["Cardiomegaly"] == 0.0
    assert abs(skewed["No Finding"] - 0.1) < 0.04


def test_config_rejects_unknown_observations_and_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        PhantomConfig(prevalence={"Pneumonitis": 0.1})
    with pytest.raises(ValueError, match="lie in"):
        PhantomConfig(prevalence={"Edema": 1.5})


def test_labeler_recovers_generator_labels():
    from rrg_core.labeler import label_report

    n = 2500
    agree = dict.fromkeys(OBSERVATIONS, 0)
    disagreements = []
    for i in range(n):
        rng = np.random.default_rng([31, i])
        written = write_report(sample_findings(rng), rng)
        read = label_report(written.text)
        for name in OBSERVATIONS:
            agree[name] += read[name] == written.labels[name]
            if read[name] != written.labels[name] and len(disagreements) < 5:
                disagreements.append((name, written.labels[name], read[name], written.text))
    rates = {name: count / n for name, count in agree.items()}
    assert min(rates.values()) >= 0.99, (rates, disagreements)


def test_reports_state_all_four_label_values_and_read_like_findings():
    values = {name: set() for name in OBSERVATIONS}
    for i in range(1500):
        rng = np.random.default_rng([41, i])
        written = write_report(sample_findings(rng), rng)
        assert (written.text[0].isupper() or written.text[0].isdigit()) and written.text.endswith(".")
        assert "  " not in written.text and ".." not in written.text
        for name, value in written.labels.items():
            values[name].add(value)
    for name in PATHOLOGIES:
        assert {1, -1, None} <= values[name], name
    for name in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Edema", "Consolidation"):
        assert 0 in values[name], name


def test_write_dataset_layout(tmp_path):
    root = write_dataset(tmp_path / "synth", n=10, seed=5, size=64)
    annotation = json.loads((root / "annotation.json").read_text())
    assert {k: len(v) for k, v in annotation.items()} == {"train": 8, "val": 1, "test": 1}
    masks_seen = 0
    for split, entries in annotation.items():
        for entry in entries:
            assert set(entry) == {"id", "report", "image_path", "split", "labels", "masks"}
            assert entry["split"] == split and set(entry["labels"]) == set(OBSERVATIONS)
            index = int(entry["id"].rsplit("-", 1)[1])
            phantom = make_phantom(5, index, PhantomConfig(size=64))
            png = Image.open(root / "images" / entry["image_path"][0])
            assert png.mode == "L" and png.size == (64, 64)
            pixels = np.asarray(png, dtype=np.float32) / 255
            assert np.corrcoef(pixels.ravel(), phantom.image.ravel())[0, 1] > 0.999
            assert entry["report"] == phantom.report and entry["labels"] == phantom.labels
            for observation, paths in entry["masks"].items():
                for path, mask in zip(paths, phantom.masks[observation]):
                    stored = np.asarray(Image.open(root / "masks" / path))
                    assert set(np.unique(stored)) <= {0, 255}
                    assert np.array_equal(stored == 255, mask)
                    masks_seen += 1
    assert masks_seen > 0

    from rrg_core.datasets import load_annotation  # the training code reads it like any other dataset

    studies = load_annotation(root, check_files=True)
    assert len(studies["train"]) == 8 and studies["train"][0].labels_source == "annotation"


def test_dicom_is_a_valid_synthetic_dx_object(tmp_path):
    root = write_dataset(tmp_path / "synth", n=2, seed=6, size=64, dicom=True, splits=(1.0, 0.0, 0.0))
    phantom = make_phantom(6, 1, PhantomConfig(size=64))
    ds = pydicom.dcmread(root / "dicom" / f"{phantom.study_id}.dcm")
    assert ds.preamble == b"\x00" * 128 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.Modality, ds.PhotometricInterpretation, ds.ViewPosition, ds.BodyPartExamined) == (
        "DX", "MONOCHROME2", "PA", "CHEST")
    assert str(ds.PatientName) == "SYNTHETIC^PHANTOM" and ds.PatientID.startswith("SYNTH-")
    assert ds.BitsStored == 12 and float(ds.WindowWidth) > 0
    pixels = ds.pixel_array.astype(np.float32)
    assert pixels.shape == (64, 64) and pixels.max() <= 4095
    assert np.corrcoef(pixels.ravel(), phantom.image.ravel())[0, 1] > 0.999

    from rrg_core.xray_io import read_xray  # the demo's upload path reads it back

    read = read_xray(root / "dicom" / f"{phantom.study_id}.dcm").pixels
    assert np.corrcoef(read.ravel(), phantom.image.ravel())[0, 1] > 0.999


def test_parallel_writing_gives_the_same_dataset(tmp_path):
    one = write_dataset(tmp_path / "one", n=6, seed=9, size=64)
    two = write_dataset(tmp_path / "two", n=6, seed=9, size=64, workers=2)
    assert (one / "annotation.json").read_text() == (two / "annotation.json").read_text()
    for path in sorted((one / "images").rglob("*.png")):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(two / path.relative_to(one))))


def test_cli_writes_a_dataset_and_a_contact_sheet(tmp_path, capsys):
    assert cli(["--out", str(tmp_path / "d"), "--n", "3", "--seed", "2", "--size", "64"]) == 0
    assert len(json.loads((tmp_path / "d" / "annotation.json").read_text())["train"]) == 2
    sheet = tmp_path / "sheet.png"
    assert cli(["--contact-sheet", str(sheet), "--per-finding", "--size", "64"]) == 0
    grid = Image.open(sheet)
    assert grid.mode == "RGB" and grid.size == (4 * 64, 7 * 64)  # 13 pairs + No Finding, 4 per row
    assert "contact sheet" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["--n", "3"])
