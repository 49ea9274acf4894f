"""The diagnosis head's AUROC in the evaluation: the rank formula against independent
computations, and on a tiny model against its own diagnosis output."""
from __future__ import annotations

from itertools import product

import numpy as np
import pytest
from model_fixtures import tiny_model, write_tiny_dataset
from scipy.stats import mannwhitneyu

from rrg_core.datasets import load_split
from rrg_core.evaluation import abnormal_drafts, auroc, diagnosis_auroc, diagnosis_logits, evaluate
from rrg_core.labeler import label_report
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.pipeline import ReportPipeline
from train.evaluate import diagnosis_table


def pairwise_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The definition: the share of (positive, negative) pairs ordered right, ties half."""
    pos, neg = scores[positive], scores[~positive]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p, n in product(pos, neg)]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_mann_whitney_and_the_pairwise_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positive = rng.random(60) < 0.3
    scores = np.round(rng.random(60) + 0.4 * positive, 1)  # rounded: many ties
    u = mannwhitneyu(scores[positive], scores[~positive]).statistic
    expected = u / (positive.sum() * (~positive).sum())
    assert auroc(scores, positive) == pytest.approx(expected, abs=1e-12)
    assert auroc(scores, positive) == pytest.approx(pairwise_auroc(scores, positive), abs=1e-12)


def test_auroc_extremes_and_one_class() -> None:
    positive = np.array([False, False, True, True])
    assert auroc([0.1, 0.2, 0.3, 0.4], positive) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], positive) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], positive) == 0.5
    assert auroc([0.1, 0.2], [True, True]) is None
    assert auroc([0.1, 0.2], [False, False]) is None


def test_mean_counts_only_observations_with_enough_positives() -> None:
    rng = np.random.default_rng(0)
    states = np.full((40, len(OBSERVATIONS)), int(State.NEGATIVE))
    states[:12, 0] = State.POSITIVE  # 12 positives: counted
    states[:3, 1] = State.POSITIVE  # 3: reported, not averaged
    states[:12, 2] = State.UNCERTAIN  # uncertain is not positive: no AUROC
    p = rng.random(states.shape)
    p[:12, 0] += 1  # the counted observation is separated perfectly
    result = diagnosis_auroc(p, states)
    assert result["positives"][OBSERVATIONS[0]] == 12 and result["positives"][OBSERVATIONS[1]] == 3
    assert result["per_class"][OBSERVATIONS[0]] == 1.0
    assert result["per_class"][OBSERVATIONS[1]] is not None and result["per_class"][OBSERVATIONS[2]] is None
    assert result["mean_over"] == [OBSERVATIONS[0]] and result["mean"] == 1.0
    table = diagnosis_table(result)
    assert f"| {OBSERVATIONS[0]} | 12 | 1.000 |" in table and f"| {OBSERVATIONS[2]} | 0 | - |" in table
    assert "| **mean** (>= 10 positives: 1) | | 1.000 |" in table


@pytest.mark.slow
def test_evaluate_reports_the_heads_auroc_on_a_tiny_model(tmp_path) -> None:
    """``diagnosis.auroc`` ranks the head's P(positive) from the generated Reports; recomputed here
    from the head's own output on the same studies, it must agree."""
    model, _ = tiny_model()
    studies = load_split(write_tiny_dataset(tmp_path / "data"), "all")
    result = evaluate(ReportPipeline(model), studies, progress=False)["diagnosis"]["auroc"]

    logits, states = diagnosis_logits(model, studies)
    p_positive = model.diagnosis.decide(logits, model.config.diagnosis.decision_adjustment)[0][..., State.POSITIVE]
    positive = (states == State.POSITIVE).numpy()
    assert result["positives"] == dict(zip(OBSERVATIONS, positive.sum(0).tolist()))
    both_classes = [n for i, n in enumerate(OBSERVATIONS) if 0 < positive[:, i].sum() < len(studies)]
    assert both_classes  # the tiny labels have positives for several observations
    for i, name in enumerate(OBSERVATIONS):
        if name in both_classes:
            expected = auroc(p_positive[:, i].numpy(), positive[:, i])
            assert result["per_class"][name] == pytest.approx(expected, abs=1e-6)
        else:
            assert result["per_class"][name] is None
    assert result["mean"] is None and result["mean_over"] == []  # no observation has 10 positives here


def test_abnormal_drafts_counts_studies_by_the_findings_their_texts_state():
    references = [label_report(t) for t in (
        "Mild cardiomegaly. No pleural effusion.",  # abnormal, drafted abnormal
        "Small right pleural effusion.",  # abnormal, drafted normal
        "The lungs are clear. No acute cardiopulmonary abnormality.",  # normal, drafted normal
        "Sternotomy wires. The lungs are clear.",  # devices only: normal, drafted abnormal
    )]
    drafts = [label_report(t) for t in (
        "The heart is enlarged.",
        "The lungs are clear.",
        "No acute disease.",
        "Left basilar atelectasis.",
    )]
    assert abnormal_drafts(references, drafts) == {
        "abnormal": 2, "abnormal_drafted_abnormal": 1, "normal": 2, "normal_drafted_abnormal": 1}
