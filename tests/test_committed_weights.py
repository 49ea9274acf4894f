"""The weights committed under assets/weights/ load strictly, run, and behave as their cards say.

They were trained by different versions of the recipe; each config.json pins the choices its
weights were trained with, and these tests catch a change that would silently break that."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rrg_core.config import FORMAT_VERSION, REVTAFConfig
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.pipeline import ReportPipeline
from rrg_core.xray_io import read_xray
from train.config import TrainConfig

WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "weights"
EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


@pytest.fixture(scope="module")
def default_model():
    return ReportPipeline.from_pretrained(WEIGHTS / "synthcxr")


def _positives(report) -> set[str]:
    return {o for o, s in zip(OBSERVATIONS, report.states) if s == State.POSITIVE}


def test_iu_weights_load_from_their_nested_config_without_report_text():
    assert json.loads((WEIGHTS / "iu-xray-small" / "config.json").read_text())["format_version"] == FORMAT_VERSION
    model = ReportPipeline.from_pretrained(WEIGHTS / "iu-xray-small")
    c = model.config
    assert c.vision.n_views == 2 and model.model.diagnosis.evidence is not None
    assert model.model.index is not None and model.model.index.texts is None  # IU report text is never committed
    xray = read_xray(EXAMPLES / "normal.png")
    report = model([[xray, xray]], num_beams=1, max_new_tokens=30)[0]
    assert report.text.strip() and len(report.references) == c.retrieval.top_k
    assert report.attention[0].heatmap.shape == xray.pixels.shape


def test_default_weights_use_the_current_recipe(default_model):
    c = default_model.config
    assert default_model.model.diagnosis.evidence is not None and c.fvtaf.sinkhorn_tol == REVTAFConfig().fvtaf.sinkhorn_tol
    assert c.fvtaf.grounding_weight > 0  # its heatmaps are mask-supervised (the card says so)


# Fields that train.fit and train.release fill in from the data and the validation split.
RELEASE_TUNED = {"decoder.vocab_size", "diagnosis.label_priors", "diagnosis.decision_adjustment"}


def _flat(config: dict) -> dict:
    """{"section.field": value} of a config dict."""
    return {f"{k}.{n}" if isinstance(v, dict) else k: w for k, v in config.items()
            for n, w in (v.items() if isinstance(v, dict) else [(k, v)])}


@pytest.mark.parametrize(("weights", "config"), [("synthcxr", "synthcxr-small"), ("iu-xray-small", "iu-xray-small")])
def test_the_cards_training_config_builds_the_committed_model(weights, config):
    """The card's `train.fit --config` command must train the model that was committed: a new
    default in REVTAFConfig (a recipe change, the Sinkhorn tolerance becoming relative) has to
    be pinned in the training config of every release that predates it."""
    assert f"python -m train.fit --config {config}\n" in (WEIGHTS / weights / "README.md").read_text()
    train = TrainConfig.load(config)
    fresh = _flat(train.model_config().to_dict())
    committed = _flat(REVTAFConfig.load(WEIGHTS / weights / "config.json").to_dict())
    differing = {k for k in fresh if fresh[k] != committed[k]}
    assert differing <= RELEASE_TUNED, {k: (fresh[k], committed[k]) for k in differing - RELEASE_TUNED}


@pytest.mark.parametrize(
    ("example", "finding"),
    [("cardiomegaly.png", "Cardiomegaly"), ("pleural_effusion.dcm", "Pleural Effusion")],
)
def test_default_weights_call_the_examples_finding(default_model, example, finding):
    report = default_model([read_xray(EXAMPLES / example)], num_beams=1)[0]
    assert finding in _positives(report)


def test_default_weights_call_nothing_on_the_normal_example(default_model):
    report = default_model([read_xray(EXAMPLES / "normal.png")], num_beams=1)[0]
    assert not _positives(report) - {"No Finding"}


@pytest.mark.parametrize("weights", ["synthcxr", "iu-xray-small"])
def test_committed_weights_ship_tuned_thresholds(weights):
    model = ReportPipeline.from_pretrained(WEIGHTS / weights)
    assert model.decision is not None and set(model.decision.thresholds) == set(OBSERVATIONS) - {"No Finding"}
    assert "validation" in model.decision.fitted_on


@pytest.mark.real_data
def test_iu_drafts_on_real_films_follow_the_findings_and_the_reader(iu_xray_root):
    from rrg_core.datasets import load_split
    from rrg_core.labeler import label_report

    model = ReportPipeline.from_pretrained(WEIGHTS / "iu-xray-small")
    studies = load_split(iu_xray_root, "test")[:3]
    views = [[read_xray(p) for p in s.image_paths] for s in studies]
    forced = [{"Cardiomegaly": "positive", "Pleural Effusion": "positive"}, {"Pneumothorax": "positive"}, None]
    for report in (*model(views, max_map_side=64),
                   *model(views, max_map_side=64, states=forced)):
        labels = label_report(report.text)
        assert {o for o, v in labels.items() if v == 1} == _positives(report), report.text


GOLDEN = Path(__file__).parent / "data" / "committed_weights_reports.json"


@pytest.mark.parametrize("weights", ["synthcxr", "iu-xray-small"])
def test_reports_are_the_ones_the_weights_gave_when_they_were_pinned(weights):
    """Loaded by name, run through ReportPipeline: the same drafts, forced drafts, states,
    references and numbers as when they were pinned (``_about`` in the file says when: the
    default's before the tensor-model / pipeline split, so that refactor and the retirement of
    the first recipe's switches changed none of its outputs; the IU weights' at their release)."""
    golden = json.loads(GOLDEN.read_text())[weights]
    reporter = ReportPipeline.from_pretrained(weights)
    for k, (name, expected) in enumerate(golden.items()):
        xray = read_xray(EXAMPLES / name)
        report = reporter([xray], max_map_side=64)[0]
        assert hashlib.sha256(report.text.encode()).hexdigest() == expected["text_sha256"], (name, report.text)
        if k < 2:  # a reader's override too (a few, for time)
            forced = reporter([xray], max_map_side=64, states=[{"Pleural Effusion": "positive"}])[0]
            assert hashlib.sha256(forced.text.encode()).hexdigest() == expected["forced_text_sha256"], forced.text
        assert report.states == expected["states"]
        assert [r.study_id for r in report.references] == expected["references"]
        assert np.allclose([r.distance for r in report.references], expected["distances"], atol=1e-4)
        p = {f["observation"]: f["p_positive"] for f in report.findings()}
        assert np.allclose([p[o] for o in expected["p_positive"]], list(expected["p_positive"].values()), atol=1e-4)
        assert report.input_check.ood_score == pytest.approx(expected["ood_score"], abs=1e-3)


@pytest.mark.parametrize("weights", ["synthcxr"])
def test_the_committed_flat_configs_are_converted_when_read(weights):
    """The weights are not committed again to change their config's format: version 1 is read."""
    on_disk = json.loads((WEIGHTS / weights / "config.json").read_text())
    assert on_disk["format_version"] == 1
    config = REVTAFConfig.load(WEIGHTS / weights / "config.json")
    assert config.format_version == 2 and config.lre.dim == on_disk["hyperbolic_dim"]
    assert config.decoder.vocab_size == on_disk["vocab_size"] and config.retrieval.top_k == on_disk["top_k"]
