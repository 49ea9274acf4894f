"""Annotation readers: tiny R2Gen, PromptMRG and SynthCXR datasets built in tmp_path, and the real IU X-Ray."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rrg_core.datasets import label_priors, load_annotation, load_split
from rrg_core.observations import OBSERVATIONS, State

IU_XRAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray"
NOTHING = {name: None for name in OBSERVATIONS}


@pytest.fixture
def labeler_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for rrg_core.labeler (another module): says Cardiomegaly, records the reports."""
    calls: list[str] = []

    def label_report(text: str) -> dict[str, int | None]:
        calls.append(text)
        return {"Cardiomegaly": 1}

    module = types.ModuleType("rrg_core.labeler")
    module.label_report = label_report
    monkeypatch.setitem(sys.modules, "rrg_core.labeler", module)
    return calls


def write_dataset(root: Path, annotation: object, name: str = "annotation.json") -> Path:
    """Write the annotation and a small PNG for every image and mask path it names."""
    entries = annotation if isinstance(annotation, list) else [e for v in annotation.values() for e in v]
    for entry in entries:
        for rel in entry["image_path"]:
            _png(root / "images" / rel)
        for paths in entry.get("masks", {}).values():
            for rel in paths:
                _png(root / "masks" / rel)
    (root / name).write_text(json.dumps(annotation))
    return root / name


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)


def entry(study_id: str, labels: object = None, **extra: object) -> dict:
    return {
        "id": study_id,
        "report": f"report of {study_id}.",
        "image_path": [f"{study_id}/0.png", f"{study_id}/1.png"],
        "labels": labels,
        **extra,
    }


def test_r2gen_iu_layout(tmp_path: Path, labeler_calls: list[str]) -> None:
    views = [{"file": "a.png", "projection": "Lateral"}, {"file": "b.png", "projection": "Frontal"}]
    write_dataset(
        tmp_path,
        {
            "train": [
                entry("CXR1_IM-1", {**NOTHING, "Edema": 1, "Pneumothorax": 0, "No Finding": -1}),
                entry("CXR2_IM-2", None, source_images=views),
            ],
            "val": [entry("CXR3_IM-3", {"Fracture": 1.0})],
            "test": [],
        },
    )
    splits = load_annotation(tmp_path, check_files=True)

    assert {k: [s.study_id for s in v] for k, v in splits.items()} == {
        "train": ["CXR1_IM-1", "CXR2_IM-2"],
        "val": ["CXR3_IM-3"],
        "test": [],
    }
    first, second = splits["train"]
    assert first.image_paths == [tmp_path / "images/CXR1_IM-1/0.png", tmp_path / "images/CXR1_IM-1/1.png"]
    assert first.labels == {**NOTHING, "Edema": 1, "Pneumothorax": 0, "No Finding": -1}
    assert list(first.labels) == list(OBSERVATIONS)
    assert (first.split, first.labels_source, first.report) == ("train", "annotation", "report of CXR1_IM-1.")
    # source_images says 1.png is the frontal view: it goes first
    assert second.image_paths == [tmp_path / "images/CXR2_IM-2/1.png", tmp_path / "images/CXR2_IM-2/0.png"]
    assert (second.labels_source, second.labels) == ("labeler", {**NOTHING, "Cardiomegaly": 1})
    assert labeler_calls == ["report of CXR2_IM-2."]
    # a partial dict means "not mentioned" for the rest; 1.0 is read as 1
    assert splits["val"][0].labels == {**NOTHING, "Fracture": 1}
    assert splits["val"][0].mask_paths == {}


def test_r2gen_mimic_layout_nested_paths(tmp_path: Path, labeler_calls: list[str]) -> None:
    rel = "p10/p10000032/s50414267/02aa804e.jpg"
    item = {"id": "02aa804e", "study_id": 50414267, "subject_id": 10000032, "report": "x.", "image_path": [rel]}
    write_dataset(tmp_path, {"train": [item], "val": [], "test": []})
    (study,) = load_split(tmp_path, "train", check_files=True)
    assert study.study_id == "02aa804e"
    assert study.image_paths == [tmp_path / "images" / rel]
    assert study.labels_source == "labeler" and labeler_calls == ["x."]


def test_promptmrg_mimic_layout_18_states(tmp_path: Path) -> None:
    states = [State.BLANK, State.POSITIVE, State.NEGATIVE, State.UNCERTAIN] + [0] * 10 + [1, 2, 3, 1]
    write_dataset(
        tmp_path,
        {"train": [entry("a", states, clip_indices=[3, 1])], "val": [], "test": [entry("b", [1] * 14)]},
        name="mimic_annotation_promptmrg.json",
    )
    splits = load_annotation(tmp_path)
    assert splits["train"][0].labels == {
        **NOTHING,
        "Cardiomegaly": 1,
        "Lung Opacity": 0,
        "Lung Lesion": -1,
    }
    assert splits["train"][0].labels_source == "annotation"
    assert splits["test"][0].labels == {name: 1 for name in OBSERVATIONS}


def test_promptmrg_iu_list_is_a_test_set(tmp_path: Path) -> None:
    write_dataset(tmp_path, [entry("a", [0] * 13 + [1]), entry("b", [2] * 14)], name="iu_annotation_promptmrg.json")
    splits = load_annotation(tmp_path)
    assert (splits["train"], splits["val"]) == ([], [])
    assert [s.study_id for s in splits["test"]] == ["a", "b"]
    assert splits["test"][0].labels == {**NOTHING, "No Finding": 1}
    assert splits["test"][1].labels == {name: 0 for name in OBSERVATIONS}
    assert {s.split for s in splits["test"]} == {"test"}


def test_synthcxr_masks(tmp_path: Path) -> None:
    masks = {"Pleural Effusion": ["s1/pleural_effusion_0.png", "s1/pleural_effusion_1.png"]}
    labels = {**{name: 0 for name in OBSERVATIONS}, "Pleural Effusion": 1}
    write_dataset(tmp_path, {"train": [entry("s1", labels, masks=masks)], "val": [], "test": []})
    (study,) = load_split(tmp_path, "all", check_files=True)
    assert study.mask_paths == {
        "Pleural Effusion": [tmp_path / "masks/s1/pleural_effusion_0.png", tmp_path / "masks/s1/pleural_effusion_1.png"]
    }
    assert study.labels == labels


def test_load_split_all_keeps_split_order(tmp_path: Path) -> None:
    write_dataset(
        tmp_path, {"test": [entry("t", NOTHING)], "train": [entry("a", NOTHING)], "val": [entry("v", NOTHING)]}
    )
    assert [s.study_id for s in load_split(tmp_path, "all")] == ["a", "v", "t"]
    assert [s.split for s in load_split(tmp_path, "all")] == ["train", "val", "test"]
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(tmp_path, "validation")


def test_named_annotation_file_wins_over_default(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": [entry("default", NOTHING)]})
    write_dataset(tmp_path, {"train": [entry("other", NOTHING)]}, name="other.json")
    assert load_split(tmp_path, "train")[0].study_id == "default"
    assert load_split(tmp_path, "train", annotation="other.json")[0].study_id == "other"


def test_check_files_counts_missing_files(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": [entry("a", NOTHING), entry("b", NOTHING)]})
    gone = tmp_path / "images/b/1.png"
    gone.unlink()
    assert len(load_split(tmp_path, "train")) == 2  # not checked by default
    expected = r"1 of 4 files listed in .*annotation.json are missing, e.g. " + re.escape(str(gone))
    with pytest.raises(FileNotFoundError, match=expected):
        load_annotation(tmp_path, check_files=True)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"train": [], "    ": []}, r"top-level keys must be among"),
        ({"train": {"id": "a"}}, r"\[train\]: expected a list"),
        ({"train": [{"id": "a", "image_path": ["a.png"]}]}, r"\[train\]\[0\]: missing key\(s\) \['report'\]"),
        ({"val": [entry("a", {"Hernia": 1})]}, r"\[val\]\[0\]: bad labels: unknown observation"),
        ({"val": [entry("a", {"Edema": 2})]}, r"\[val\]\[0\]: bad labels: not a CheXpert label value"),
        ({"test": [entry("a", [1] * 13)]}, r"list of 14 or 18 PromptMRG states"),
        ({"test": [entry("a", [1] * 13 + [7])]}, r"bad labels"),
        ({"test": [{**entry("a", None), "image_path": "a/0.png"}]}, r"image_path must be a non-empty list"),
        ({"test": [entry("a", NOTHING, masks={"Nodule": ["a.png"]})]}, r"unknown observation\(s\) \['Nodule'\]"),
        ("just a string", r"expected a JSON object"),
    ],
)
def test_bad_annotations_name_file_and_problem(tmp_path: Path, annotation: object, message: str) -> None:
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    with pytest.raises(ValueError, match=message) as err:
        load_annotation(tmp_path)
    assert str(tmp_path / "annotation.json") in str(err.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="looked for annotation.json, mimic_annotation_promptmrg.json"):
        load_annotation(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotation(tmp_path, "nope.json")
    (tmp_path / "annotation.json").write_text("{not json")
    with pytest.raises(ValueError, match="annotation.json: not valid JSON"):
        load_annotation(tmp_path)


def test_label_priors_hand_computed(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"train": [entry("a", {"Edema": 1}), entry("b", {"Edema": 0}), entry("c", {"Edema": 1})]})
    studies = load_split(tmp_path, "train")
    priors = label_priors(studies)
    edema = OBSERVATIONS.index("Edema")
    # columns: blank, positive, negative, uncertain; add-one smoothing over 3 studies
    np.testing.assert_allclose(priors[edema], [1 / 7, 3 / 7, 2 / 7, 1 / 7])
    np.testing.assert_allclose(priors[OBSERVATIONS.index("Fracture")], [4 / 7, 1 / 7, 1 / 7, 1 / 7])
    np.testing.assert_allclose(label_priors(studies, smoothing=0)[edema], [0, 2 / 3, 1 / 3, 0])
    assert priors.shape == (14, 4)
    np.testing.assert_allclose(priors.sum(1), 1)
    with pytest.raises(ValueError, match="undefined"):
        label_priors([], smoothing=0)


@pytest.mark.real_data
def test_real_iu_xray(labeler_calls: list[str]) -> None:
    if not (IU_XRAY / "annotation.json").is_file():
        pytest.skip(f"real IU X-Ray data not found at {IU_XRAY}")
    splits = load_annotation(IU_XRAY, check_files=True)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2069, "val": 296, "test": 590}
    studies = [s for v in splits.values() for s in v]
    assert all(len(s.image_paths) == 2 and all(p.is_absolute() for p in s.image_paths) for s in studies)
    assert sum(s.labels_source == "annotation" for s in splits["train"]) == 2063
    assert len(labeler_calls) == 8  # the README's 8 unlabelled studies, and only them
    assert len({s.study_id for s in studies}) == 2955
    priors = label_priors(splits["train"])
    np.testing.assert_allclose(priors.sum(1), 1)
    assert (priors > 0).all()
