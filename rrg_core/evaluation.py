"""Evaluate a model on a dataset split with the field's full metric suite.

NLG (pycocoevalcap, on R2Gen-normalised text), clinical efficacy (our CheXpert-style
labeler on generated and reference reports alike), the diagnosis head itself (AUROC of its
P(positive) against the studies' labels: what the image side sees, whether or not the text
says it), retrieval (label agreement of the top-1 reference) and, on datasets with masks
(SynthCXR), grounding of the MPSA maps.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy.stats import rankdata
from tqdm.auto import tqdm

from .datasets import Study
from .decisions import DecisionRule, fit_thresholds
from .labeler import label_report
from .metrics import (
    clinical_efficacy,
    grounding_metrics,
    nlg_metrics,
    paper_average,
    paper_row,
    retrieval_metrics,
)
from .model import REVTAF
from .observations import OBSERVATIONS, State, is_abnormal, labels_to_states
from .pipeline import ReportPipeline
from .prompts import FINDING_PROMPTS
from .report_text import normalize_report
from .study_dataset import read_masks, study_loader

POINTING_TOLERANCE_PX = 15
# Below this many positives an observation's AUROC is too noisy to enter the mean.
AUROC_MIN_POSITIVES = 10


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve from ranks (Mann-Whitney U / (n+ n-), ties counted half);
    None where one class is absent."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = rankdata(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def diagnosis_auroc(p_positive: np.ndarray, states: np.ndarray, min_positives: int = AUROC_MIN_POSITIVES) -> dict:
    """Per-observation AUROC of P(positive) [N, 14] against the true states [N, 14] being
    positive, the positives behind each, and the mean over observations with ``min_positives``."""
    positive = states == State.POSITIVE
    per_class = {name: auroc(p_positive[:, i], positive[:, i]) for i, name in enumerate(OBSERVATIONS)}
    positives = dict(zip(OBSERVATIONS, positive.sum(0).tolist()))
    counted = [n for n in OBSERVATIONS if positives[n] >= min_positives and per_class[n] is not None]
    return {
        "per_class": per_class,
        "positives": positives,
        "mean": float(np.mean([per_class[n] for n in counted])) if counted else None,
        "mean_over": counted,
        "min_positives": min_positives,
    }


@torch.no_grad()
def diagnosis_logits(model: REVTAF, studies: Sequence[Study], *, dataset: str = "iu_xray", batch_size: int = 32):
    """Raw diagnosis logits [N, 14, 4] and true states [N, 14], without generating text."""
    model.eval()
    loader = study_loader(studies, model.config, model.tokenizer, dataset=dataset, batch_size=batch_size)
    logits, states = [], []
    for batch in loader:
        logits.append(model.diagnose(model.encode(batch["images"].to(model.device))).logits.cpu())
        states.append(batch["states"])
    return torch.cat(logits), torch.cat(states)


def fit_decision_rule(model: REVTAF, studies: Sequence[Study], *, dataset: str = "iu_xray",
                      fitted_on: str = "") -> DecisionRule:
    """Thresholds on P(positive) tuned on ``studies`` (validation data) by
    :func:`rrg_core.decisions.fit_thresholds`, from the diagnosis head alone (no text generated)."""
    logits, truth = diagnosis_logits(model, studies, dataset=dataset)
    probabilities = model.diagnosis.decide(logits)[0].numpy()
    thresholds, micro, positives = fit_thresholds(probabilities, truth.numpy())
    return DecisionRule(thresholds, fitted_on=f"{fitted_on} (validation micro-F1 {micro:.3f})", positives=positives)


def table_text_agreement(states: Sequence[Sequence[int]], labels: Sequence[dict]) -> float:
    """Share of (study, observation) pairs where "positive in the findings table" equals
    "positive in the text" by our labeler (1.0 for every draft rrg_core.faithful made)."""
    pairs = [(s == State.POSITIVE) == (lab[o] == 1) for row, lab in zip(states, labels) for o, s in zip(OBSERVATIONS, row)]
    return sum(pairs) / max(1, len(pairs))


def abnormal_drafts(reference_labels: Sequence[dict], draft_labels: Sequence[dict]) -> dict[str, int]:
    """How often an abnormal study gets an abnormal draft, and a normal one a normal draft: a
    study is abnormal when its text (by our labeler) has a positive finding other than No Finding
    and Support Devices. Template-writing weights score well on the language metrics of a mostly
    normal test set while giving every abnormal study a normal draft; this count shows it."""
    counts = {"abnormal": 0, "abnormal_drafted_abnormal": 0, "normal": 0, "normal_drafted_abnormal": 0}
    for reference, draft in zip(reference_labels, draft_labels):
        kind = "abnormal" if is_abnormal(reference) else "normal"
        counts[kind] += 1
        counts[f"{kind}_drafted_abnormal"] += is_abnormal(draft)
    return counts


def _mask_size(study: Study) -> tuple[int, int] | None:
    """Heatmaps are compared with masks, so they are made at the masks' size (read from the header)."""
    for paths in study.mask_paths.values():
        for path in paths:
            with Image.open(path) as image:
                return image.height, image.width
    return None


@torch.no_grad()
def generate_for(
    reporter: ReportPipeline,
    studies: Sequence[Study],
    *,
    dataset: str = "iu_xray",
    batch_size: int = 16,
    progress: bool = True,
    **generate_options,
) -> tuple[list[str], list, list[str]]:
    """Normalised reference texts, Reports and study ids, batch by batch."""
    model = reporter.model.eval()
    loader = study_loader(studies, model.config, model.tokenizer, dataset=dataset, batch_size=batch_size)
    references, reports = [], []
    for start, batch in zip(range(0, len(studies), batch_size), tqdm(loader, desc="generating", disable=not progress)):
        chunk = studies[start : start + batch_size]
        sizes = [_mask_size(s) or tuple(batch["images"].shape[-2:]) for s in chunk]
        reports += reporter.generate(batch["images"].to(model.device), image_sizes=sizes, **generate_options)
        references += batch["reports"]
    return references, reports, [s.study_id for s in studies]


def evaluate(
    reporter: ReportPipeline,
    studies: Sequence[Study],
    *,
    dataset: str = "iu_xray",
    batch_size: int = 16,
    progress: bool = True,
    samples: int = 20,
    **generate_options,
) -> dict:
    """All metrics for ``studies``; ``samples`` generated/reference pairs are kept for reading."""
    references, reports, ids = generate_for(
        reporter, studies, dataset=dataset, batch_size=batch_size, progress=progress, **generate_options
    )
    # The drafts are prose; the field's metrics compare R2Gen-normalised text, as the references are.
    hypotheses = [normalize_report(r.text, dataset) for r in reports]
    nlg = nlg_metrics(references, hypotheses)
    generated_labels = [label_report(r.text) for r in reports]
    reference_labels = [label_report(t) for t in references]
    ce = clinical_efficacy(reference_labels, generated_labels)
    query_states = np.array([labels_to_states(s.labels) for s in studies])
    top1_states = np.array([r.references[0].label_states for r in reports])
    p_positive = np.array([[r.probabilities[name][State.POSITIVE] for name in OBSERVATIONS] for r in reports])
    result = {
        "n": len(studies),
        "nlg": nlg,
        "ce": ce,
        # against the dataset's labels, and against our labeler on the reference text (the two
        # disagree on IU X-Ray's Cardiomegaly: docs/labeler.md)
        "diagnosis": {"auroc": diagnosis_auroc(p_positive, query_states),
                      "auroc_labeler": diagnosis_auroc(p_positive, np.array([labels_to_states(r) for r in reference_labels]))},
        "retrieval": retrieval_metrics(query_states, top1_states),
        "paper": paper_row(nlg, ce),
        "table_text_agreement": table_text_agreement([r.states for r in reports], generated_labels),
        "abnormal_drafts": abnormal_drafts(reference_labels, generated_labels),
        "avg": paper_average(nlg, ce),
        "samples": [
            {"study_id": i, "reference": ref, "generated": r.text}
            for i, ref, r in list(zip(ids, references, reports))[:samples]
        ],
    }
    grounding_items = list(_grounding_items(studies, reports))
    if grounding_items:
        result["grounding"] = grounding_metrics(grounding_items)
        # The pointing game as first defined (Zhang et al., 2016) forgives a peak within 15 pixels
        # of the region; the strict form above requires the peak inside the mask.
        result["grounding_15px"] = grounding_metrics(grounding_items, tolerance=POINTING_TOLERANCE_PX)
    return result


def _grounding_items(studies: Sequence[Study], reports: Sequence):
    """(finding, its prompt's heatmap on the frontal view, its masks) for every masked finding
    the study really has (positive or hedged in its labels)."""
    for study, report in zip(studies, reports):
        if not study.mask_paths or not report.attention:
            continue
        maps = {m.prompt: m.heatmap for m in report.attention if m.kind == "region" and m.view == 0}
        for name, masks in read_masks(study).items():
            if study.labels.get(name) in (1, -1) and masks:
                yield name, maps[FINDING_PROMPTS[name]], masks
