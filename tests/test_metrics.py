"""Metrics against values computed by hand from their definitions."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from rrg_core import metrics
from rrg_core.metrics import (
    clinical_efficacy,
    grounding_metrics,
    markdown_table,
    nlg_metrics,
    paper_average,
    paper_row,
    retrieval_metrics,
)
from rrg_core.observations import OBSERVATIONS

# --------------------------------------------------------------------------- NLG


class RecordingMeteor(metrics.Meteor):
    """pycocoevalcap's Meteor, remembered so the test can see its Java process ended."""

    instances: list[metrics.Meteor] = []

    def __init__(self) -> None:
        super().__init__()
        self.instances.append(self)


@pytest.fixture(scope="module")
def nlg() -> Iterator[dict[str, float]]:
    """One real run (METEOR starts Java, several seconds): a partial match and an empty hypothesis."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "Meteor", RecordingMeteor)
        yield nlg_metrics(
            ["the heart is normal in size", "no effusion"],
            ["the heart\n is  normal", ""],
        )


def test_nlg_bleu_and_rouge_hand_computed(nlg: dict[str, float]) -> None:
    assert list(nlg) == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L"]
    # corpus BLEU: every n-gram of "the heart is normal" matches, so each BLEU_n is the
    # brevity penalty exp(1 - 8/4): 6 + 2 reference words (the empty hypothesis counts) over 4
    for n in range(1, 5):
        assert nlg[f"BLEU_{n}"] == pytest.approx(math.exp(-1), abs=1e-6)
    # ROUGE-L, beta 1.2: LCS 4, P = 4/4, R = 4/6 for the first pair; 0 for the empty one
    p, r = 1.0, 4 / 6
    assert nlg["ROUGE_L"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p) / 2)


def test_nlg_meteor_runs_and_java_is_stopped(nlg: dict[str, float]) -> None:
    assert 0.2 < nlg["METEOR"] < 0.9
    (meteor,) = RecordingMeteor.instances
    assert meteor.meteor_p.returncode is not None  # the Java process is gone, not left to GC


def test_nlg_without_java_says_so(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="METEOR needs Java"):
        nlg_metrics(["a b"], ["a b"])


def test_nlg_java_dying_mid_run_is_reported_and_cleaned_up(monkeypatch: pytest.MonkeyPatch) -> None:
    class DyingMeteor(RecordingMeteor):
        def compute_score(self, gts, res):  # what pycocoevalcap does when java's answer is an empty line
            self.lock.acquire()
            return float("")

    monkeypatch.setattr(metrics, "Meteor", DyingMeteor)
    with pytest.raises(RuntimeError, match="METEOR's Java process stopped answering"):
        nlg_metrics(["a b"], ["a b"])
    meteor = DyingMeteor.instances[-1]
    assert not meteor.lock.locked() and meteor.meteor_p.returncode is not None


def test_nlg_input_checks() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        nlg_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no reports"):
        nlg_metrics([], [])


# --------------------------------------------------------------------------- clinical efficacy

REFERENCES = [{"Cardiomegaly": 1, "Edema": 1}, {"No Finding": 1}, {"Pneumonia": 1, "Cardiomegaly": 0}]
PREDICTIONS = [{"Cardiomegaly": 1, "Edema": 0, "Fracture": 1}, {"No Finding": 1}, {"Pneumonia": -1}]
# positives: report 1 tp Cardiomegaly, fp Fracture, fn Edema; report 2 tp No Finding;
# report 3 fn Pneumonia (uncertain is not positive). Totals tp 2, fp 1, fn 2.


def test_ce_micro_example_and_groups() -> None:
    ce = clinical_efficacy(REFERENCES, PREDICTIONS)
    assert ce["micro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 4, "f1": 2 * 2 / (2 * 2 + 1 + 2)})
    # per report: (1/2, 1/2, 1/2), (1, 1, 1), (0/0 -> 0, 0, 0): PromptMRG's and the paper's convention
    assert ce["example"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    # head: Cardiomegaly tp, Edema fn; tail: No Finding tp, Fracture fp, Pneumonia fn
    assert ce["head"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert ce["tail"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert ce["n_reports"] == 3


def test_ce_per_class_and_macro() -> None:
    ce = clinical_efficacy(REFERENCES, PREDICTIONS)
    per = ce["per_class"]
    assert list(per) == list(OBSERVATIONS)
    assert per["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per["Edema"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per["Fracture"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert per["Lung Lesion"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro: only the 5 observations positive somewhere; two of them are perfect
    assert ce["macro_classes"] == ["Cardiomegaly", "Edema", "Pneumonia", "Fracture", "No Finding"]
    assert ce["macro"] == pytest.approx({"precision": 2 / 5, "recall": 2 / 5, "f1": 2 / 5})


def test_ce_perfect_and_input_checks() -> None:
    assert clinical_efficacy(REFERENCES, REFERENCES)["micro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    with pytest.raises(ValueError, match="unknown observation"):
        clinical_efficacy([{"Hernia": 1}], [{}])
    with pytest.raises(ValueError, match="3 reference but 1 predicted"):
        clinical_efficacy(REFERENCES, PREDICTIONS[:1])


# --------------------------------------------------------------------------- retrieval


def test_retrieval_metrics_hand_computed() -> None:
    blank = [0] * 12
    query = np.array([[0, 0] + blank, [1, 0] + blank, [1, 2] + blank])
    top1 = np.array([[0, 0] + blank, [1, 2] + blank, [3, 2] + blank])
    # differences: 0, 1 (blank vs negative), 1 (positive vs uncertain: positive sets differ)
    assert retrieval_metrics(query, top1) == pytest.approx(
        {"hamming": 2 / 3, "precision_at_1": 1 / 3, "positive_set_match": 2 / 3}
    )
    with pytest.raises(ValueError, match=r"two \[N, 14\] arrays"):
        retrieval_metrics(query[:, :13], top1[:, :13])


# --------------------------------------------------------------------------- grounding


def grounding_items() -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    def mask(*pixels: tuple[int, int]) -> np.ndarray:
        m = np.zeros((8, 8), dtype=bool)
        for pixel in pixels:
            m[pixel] = True
        return m

    heat1 = np.zeros((8, 8))
    heat1[2, 2], heat1[2, 3], heat1[0, 0], heat1[0, 1] = 1.0, 0.9, 0.8, 0.7
    heat2 = np.zeros((8, 8))
    heat2[5, 5] = 1.0
    return [
        # peak inside a 4-pixel finding (two instances); top-4 pixels cover 2 of them: IoU 2 / 6
        ("Pleural Effusion", heat1, [mask((2, 2), (2, 3)), mask((3, 2), (3, 3))]),
        # peak 2 pixels from a 1-pixel finding: a miss at tolerance 0; IoU 0
        ("Pleural Effusion", heat2, [mask((5, 7))]),
        # a flat top over two rows and a 2-pixel finding: argmax (0,0) hits; see the test for IoU
        ("Lung Lesion", mask(*[(r, c) for r in range(2) for c in range(8)]).astype(float), [mask((0, 0), (1, 7))]),
    ]


def test_grounding_pointing_game_and_iou() -> None:
    result = grounding_metrics(grounding_items())
    assert result["overall"] == pytest.approx({"pointing_game": 2 / 3, "iou": (1 / 3 + 0 + 1 / 3) / 3, "n": 3})
    assert result["per_finding"]["Pleural Effusion"] == pytest.approx({"pointing_game": 0.5, "iou": 1 / 6, "n": 2})
    # 2 mask pixels -> the heatmap's first 2 maxima in row-major order, (0,0) and (0,1): 1 overlap
    assert result["per_finding"]["Lung Lesion"] == pytest.approx({"pointing_game": 1.0, "iou": 1 / 3, "n": 1})
    assert grounding_metrics(grounding_items(), tolerance=2)["overall"]["pointing_game"] == 1.0
    assert grounding_metrics(grounding_items(), tolerance=1.9)["overall"]["pointing_game"] == pytest.approx(2 / 3)


def test_grounding_flat_heatmap_points_at_the_first_pixel() -> None:
    corner = np.zeros((4, 4), dtype=bool)
    corner[3, 3] = True
    assert grounding_metrics([("Edema", np.ones((4, 4)), [corner])])["overall"]["pointing_game"] == 0.0
    assert grounding_metrics([("Edema", np.ones((4, 4)), [corner[::-1, ::-1]])])["overall"]["pointing_game"] == 1.0


@pytest.mark.parametrize(
    ("heatmap", "masks", "message"),
    [
        (np.zeros((4, 4)), [np.ones((4, 5), dtype=bool)], r"differ in shape"),
        (np.zeros((4, 4)), [], r"no mask"),
        (np.zeros((4, 4)), [np.zeros((4, 4), dtype=bool)], r"masks are empty"),
        (np.full((4, 4), np.nan), [np.ones((4, 4), dtype=bool)], r"NaN"),
    ],
)
def test_grounding_input_checks(heatmap: np.ndarray, masks: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grounding_metrics([("Edema", heatmap, masks)])


# --------------------------------------------------------------------------- paper table

NLG = {"BLEU_1": 0.4, "BLEU_2": 0.3, "BLEU_3": 0.2, "BLEU_4": 0.1, "METEOR": 0.15, "ROUGE_L": 0.3}


def test_paper_average_defaults_to_example_based_ce() -> None:
    ce = clinical_efficacy(REFERENCES, PREDICTIONS)
    assert paper_average(NLG, ce) == pytest.approx((1.45 + 0.5 * 3) / 9)
    assert paper_average(NLG, ce, "micro") == pytest.approx((1.45 + 2 / 3 + 1 / 2 + 4 / 7) / 9)
    row = paper_row(NLG, ce, "macro")
    assert list(row) == ["B1", "B2", "B3", "B4", "METEOR", "ROUGE-L", "P", "R", "F1", "avg"]
    assert (row["B4"], row["ROUGE-L"], row["P"]) == (0.1, 0.3, pytest.approx(0.4))
    with pytest.raises(ValueError, match="averaging must be one of"):
        paper_average(NLG, ce, "weighted")


def test_markdown_table() -> None:
    revtaf = dict(zip(metrics.PAPER_COLUMNS, (0.465, 0.318, 0.235, 0.182, 0.199, 0.336, 0.628, 0.613, 0.592)))
    table = markdown_table(
        {
            "REVTAF (paper)": {**revtaf, "avg": 0.397},
            "ours": paper_row(NLG, clinical_efficacy(REFERENCES, PREDICTIONS)),
            "R2Gen IU": {"B1": 0.47, "B2": 0.304, "METEOR": 0.187},
        }
    )
    assert table.splitlines() == [
        "| model | B1 | B2 | B3 | B4 | METEOR | ROUGE-L | P | R | F1 | avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| REVTAF (paper) | 0.465 | 0.318 | 0.235 | 0.182 | 0.199 | 0.336 | 0.628 | 0.613 | 0.592 | 0.397 |",
        "| ours | 0.400 | 0.300 | 0.200 | 0.100 | 0.150 | 0.300 | 0.500 | 0.500 | 0.500 | 0.328 |",
        "| R2Gen IU | 0.470 | 0.304 | - | - | 0.187 | - | - | - | - | - |",
    ]
    # a missing avg is computed when all 9 columns are there (the paper's .397 comes from unrounded columns)
    assert markdown_table({"x": revtaf}).endswith("| 0.592 | 0.396 |")
    with pytest.raises(ValueError, match="unknown column"):
        markdown_table({"x": {"BLEU_1": 0.4}})
