"""What the model hands to its users: a generated report with the evidence behind it.

Plain dataclasses of numpy arrays and Python values, so the demo, the CLI and the
evaluation never need to touch tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .faithful import Consistency
from .observations import OBSERVATIONS, STATE_NAMES, State, group_of


@dataclass
class Reference:
    """One retrieved training report."""

    study_id: str
    distance: float  # in the index's metric (hyperbolic by default)
    label_states: list[int]  # State values in OBSERVATIONS order
    text: str | None = None  # None where the index holds no report text
    is_global_prompt: bool = False  # the top-1 reference feeds FVTAF as the global prompt
    # Share of typical matches (held-out in-distribution studies' references) that lie farther
    # away than this one: 0.8 = "closer than 80 % of typical matches". None without a gate.
    closer_than: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "distance": self.distance,
            "closer_than": self.closer_than,
            "labels": {o: STATE_NAMES[s] for o, s in zip(OBSERVATIONS, self.label_states)},
            "text": self.text,
            "is_global_prompt": self.is_global_prompt,
        }


@dataclass
class AttentionMap:
    """An MPSA attention map over the input image for one prompt."""

    prompt: str
    kind: str  # "region" (a region/entity prompt) or "global" (the retrieved reference report)
    heatmap: np.ndarray  # float32 H x W over the whole input image (its resolution or scaled down), sums to 1
    view: int = 0  # which input view (0 = frontal, 1 = lateral)
    observation: str | None = None  # the CheXpert observation a finding prompt stands for

    def right_share(self) -> float:
        """:func:`right_share` of this map."""
        return right_share(self.heatmap)

    def peak_ratio(self) -> float:
        """:func:`peak_ratio` of this map."""
        return peak_ratio(self.heatmap)


def peak_ratio(heatmap: np.ndarray) -> float:
    """A map's peak as a multiple of its average: 1 for a uniform map (no localisation)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)  # session copies are float16
    return float(heatmap.max() * heatmap.size / max(float(heatmap.sum()), 1e-12))


def right_share(heatmap: np.ndarray) -> float:
    """The share of a map on the patient's right: the image's left half, as a frontal radiograph
    is displayed (an odd middle column counts half to each side). Evidence of the side a finding
    is on, from the image alone."""
    columns = np.asarray(heatmap).sum(axis=0, dtype=np.float64)
    half = len(columns) // 2
    right = columns[:half].sum() + (columns[half] / 2 if len(columns) % 2 else 0.0)
    return float(right / max(columns.sum(), 1e-12))


@dataclass
class InputCheck:
    """What the weights' input gate (:mod:`rrg_core.gate`) says about a study's image."""

    radiograph: bool  # False: not a chest radiograph at all (the draft should not be shown)
    refusal: str | None  # why not, one sentence; None for a radiograph
    ood_score: float  # distance of the image's features from the training images' (larger = less alike)
    ood_threshold: float  # scores above it are out of distribution (fitted on held-out in-distribution data)
    trained_on: str  # what these weights were trained on, e.g. "synthetic phantoms"

    @property
    def out_of_distribution(self) -> bool:
        return not self.radiograph or self.ood_score > self.ood_threshold


@dataclass
class Report:
    """A generated report for one study, with per-finding probabilities, references and maps."""

    text: str  # the draft as prose; it agrees with ``states`` (rrg_core.faithful)
    probabilities: dict[str, list[float]]  # observation -> probabilities of the 4 states, indexed by State
    states: list[int]  # the State per observation the text was written from, OBSERVATIONS order
    references: list[Reference] = field(default_factory=list)
    attention: list[AttentionMap] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)  # observation -> state name, set by the reader
    decision_rules: dict[str, str] = field(default_factory=dict)  # observation -> how its state was decided
    consistency: Consistency | None = None  # how the draft was made to agree with the states
    # Observation -> right_share of its frontal finding map at the model's input size: the side the
    # text follows, independent of the size (or absence) of the maps in ``attention``.
    map_right_shares: dict[str, float] = field(default_factory=dict)

    input_check: InputCheck | None = None  # None: these weights have no input gate
    calibrated: dict[str, float] | None = None  # observation -> calibrated P(positive); None: no calibration

    @property
    def out_of_distribution(self) -> bool | None:
        return None if self.input_check is None else self.input_check.out_of_distribution

    def p_positive(self, observation: str) -> float:
        """P(positive) as a reader is shown it: calibrated where the weights have a calibration,
        so every place that quotes it (the table, the maps' labels) gives the same number."""
        if self.calibrated:
            return float(self.calibrated[observation])
        return float(self.probabilities[observation][State.POSITIVE])

    def findings(self) -> list[dict[str, Any]]:
        """Per-observation summary sorted by probability of being present (positive), with the
        share of the finding's frontal map on the patient's right (None without such a map): from
        ``map_right_shares`` where the model gave them, else from the frontal maps.
        ``p_positive`` is calibrated where the weights have a calibration (``p_positive_raw`` is
        the model's own); the other states' probabilities are the model's own."""
        frontal = {m.observation: m for m in self.attention if m.kind == "region" and m.view == 0 and m.observation}
        rows = []
        for name, state in zip(OBSERVATIONS, self.states):
            p = self.probabilities[name]
            rows.append(
                {
                    "observation": name,
                    "state": STATE_NAMES[state],
                    "set_by": "reader" if name in self.overrides else "model",
                    "decision_rule": self.decision_rules.get(name),
                    "p_positive": self.p_positive(name),
                    "p_positive_raw": float(p[State.POSITIVE]),
                    "p_uncertain": float(p[State.UNCERTAIN]),
                    "p_negative": float(p[State.NEGATIVE]),
                    "p_not_mentioned": float(p[State.BLANK]),
                    "group": group_of(name),
                    "map_right_share": self.map_right_shares.get(name, frontal[name].right_share() if name in frontal else None),
                }
            )
        return sorted(rows, key=lambda r: -r["p_positive"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the heatmaps)."""
        check = self.input_check
        return {
            "report": self.text,
            "findings": self.findings(),
            "references": [r.to_dict() for r in self.references],
            "overrides": dict(self.overrides),
            "consistency": self.consistency.to_dict() if self.consistency else None,
            "out_of_distribution": self.out_of_distribution,
            "ood_score": None if check is None else check.ood_score,
            "ood_threshold": None if check is None else check.ood_threshold,
            "radiograph": None if check is None else check.radiograph,
            "refusal": None if check is None else check.refusal,
            "trained_on": None if check is None else check.trained_on,
        }


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: strict JSON has no NaN, and a
    consumer should see "no value" rather than a token its parser may reject."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
