"""Which state each finding is drafted in: per-observation thresholds on P(positive), the
reader's overrides, and one rule that keeps the states coherent.

Thresholds are tuned on validation data for the micro-F1 of positives (see :func:`fit_thresholds`) and saved
beside the weights in ``decision.json`` (a small sidecar, so tuning never rewrites
``model.safetensors``). A finding is positive when its P(positive) reaches its threshold;
otherwise it takes the most probable of the other three states. Weights without the sidecar
keep the argmax rule of :meth:`rrg_core.diagnosis.DiagnosisHead.decide`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .observations import OBSERVATIONS, PATHOLOGIES, State, state_from_word

DECISION_NAME = "decision.json"
NO_FINDING = OBSERVATIONS.index("No Finding")
_PATHOLOGY_INDICES = [OBSERVATIONS.index(o) for o in PATHOLOGIES]
# Accepted spellings of a state in overrides (CLI, API, demo).
# Observations with fewer validation positives than this keep the posterior's majority (0.5).
MIN_POSITIVES = 8
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds on P(positive), one per observation (No Finding's state is derived instead)."""

    thresholds: dict[str, float]
    criterion: str = "micro-F1 of positives over the 14 observations (No Finding derived), tuned jointly on validation data"
    fitted_on: str = ""
    positives: dict[str, int] | None = None  # validation positives per observation

    def __post_init__(self) -> None:
        unknown = set(self.thresholds) - set(OBSERVATIONS)
        if unknown:
            raise ValueError(f"decision thresholds name unknown observation(s) {sorted(unknown)}")
        bad = {o: t for o, t in self.thresholds.items() if not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0)}
        if bad:
            raise ValueError(f"decision thresholds must be numbers in [0, 1], got {bad}")

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / DECISION_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DecisionRule | None:
        """The folder's rule, or None where it has no ``decision.json``."""
        path = Path(folder) / DECISION_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"cannot read decision thresholds {path}: {err}") from err

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """probabilities [B, 14, 4] -> states [B, 14]."""
        p = np.asarray(probabilities, dtype=np.float64)
        thresholds = np.array([self.thresholds.get(o, DEFAULT_THRESHOLD) for o in OBSERVATIONS])
        others = p.copy()
        others[..., State.POSITIVE] = -1.0
        states = others.argmax(-1)
        states[p[..., State.POSITIVE] >= thresholds] = State.POSITIVE
        return states


def coherent(states: np.ndarray) -> np.ndarray:
    """No Finding as CheXpert defines it: positive exactly when no pathology is positive or
    uncertain (Support Devices aside), else not mentioned. The diagnosis head predicts it on its
    own and can contradict itself ("No Finding" beside "Pleural Effusion"); the draft and the
    table must not."""
    states = np.array(states, dtype=np.int64, copy=True)
    abnormal = np.isin(states[..., _PATHOLOGY_INDICES], (State.POSITIVE, State.UNCERTAIN)).any(-1)
    states[..., NO_FINDING] = np.where(abnormal, State.BLANK, State.POSITIVE)
    return states


def parse_overrides(overrides: Mapping[str, str | int] | None) -> dict[str, State]:
    """A reader's overrides (observation -> "positive" | "negative" | "uncertain" | "blank", or a
    State value), validated, keyed by the canonical observation name."""
    names = {o.lower(): o for o in OBSERVATIONS}
    out = {}
    for name, value in (overrides or {}).items():
        observation = names.get(str(name).strip().lower())
        if observation is None:
            raise ValueError(f"unknown observation {name!r}; choose one of: {', '.join(OBSERVATIONS)}")
        numbered = State(value) if not isinstance(value, str) and value in set(State) else None
        state = state_from_word(value) if isinstance(value, str) else numbered
        if state is None:
            raise ValueError(f"unknown state {value!r} for {observation}; choose positive, negative, uncertain or blank")
        out[observation] = state
    return out


def apply_overrides(states: np.ndarray, overrides: Mapping[str, State]) -> np.ndarray:
    """One study's states [14] with the reader's overrides, made coherent. Overriding No Finding
    to positive marks the study normal: every pathology the reader did not set becomes negative.
    No Finding cannot be withdrawn on its own (the draft would have no abnormality to state):
    ValueError unless a pathology is then positive or uncertain."""
    states = np.array(states, dtype=np.int64, copy=True)
    for name, state in overrides.items():
        states[OBSERVATIONS.index(name)] = state
    if overrides.get("No Finding") == State.POSITIVE:
        for i in _PATHOLOGY_INDICES:
            if OBSERVATIONS[i] not in overrides and states[i] in (State.POSITIVE, State.UNCERTAIN):
                states[i] = State.NEGATIVE
    result = coherent(states)
    wanted = overrides.get("No Finding")
    if wanted is not None and (wanted == State.POSITIVE) != (result[NO_FINDING] == State.POSITIVE):
        raise ValueError("No Finding follows the other findings: to call the study abnormal, set the finding "
                         "you see positive or uncertain")
    return result


def micro_f1(states: np.ndarray, truth: np.ndarray) -> float:
    """F1 of positives pooled over all observations (the field's CE micro-F1)."""
    predicted, actual = states == State.POSITIVE, truth == State.POSITIVE
    return 2 * float((predicted & actual).sum()) / max(1, int(predicted.sum() + actual.sum()))


def fit_thresholds(
    probabilities: np.ndarray, truth: np.ndarray, *, min_positives: int = MIN_POSITIVES, sweeps: int = 3,
    candidates: int = 64,
) -> tuple[dict[str, float], float, dict[str, int]]:
    """Thresholds on P(positive) tuned on validation data (``probabilities`` [N, 14, 4], true
    states ``truth`` [N, 14]) for the micro-F1 of positives over all 14 observations, No Finding
    derived by :func:`coherent` as it will be shown. Tuned jointly (coordinate ascent from 0.5,
    ``sweeps`` passes over ``candidates`` quantiles of each observation's P(positive)), because
    each call of a pathology also withdraws No Finding: thresholds tuned one by one for their
    own F1 call a weak classifier's findings so often that No Finding, the most common positive,
    is lost. Observations with fewer than ``min_positives`` validation positives keep 0.5.
    Returns the thresholds, their validation micro-F1 and the positives counted."""
    truth = np.asarray(truth)
    counts = {o: int((truth[:, j] == State.POSITIVE).sum()) for j, o in enumerate(OBSERVATIONS)}
    tuned = [o for o in OBSERVATIONS if o != "No Finding" and counts[o] >= min_positives]
    thresholds = {o: DEFAULT_THRESHOLD for o in OBSERVATIONS if o != "No Finding"}

    def objective(values: dict[str, float]) -> float:
        return micro_f1(coherent(DecisionRule(values).decide(probabilities)), truth)

    best = objective(thresholds)
    quantiles = np.linspace(0.0, 1.0, candidates)
    for _ in range(sweeps):
        improved = False
        for name in tuned:
            p = probabilities[:, OBSERVATIONS.index(name), State.POSITIVE]
            for t in np.unique(np.quantile(p, quantiles)):
                trial = {**thresholds, name: float(t)}
                value = objective(trial)
                if value > best + 1e-12:
                    best, thresholds, improved = value, trial, True
        if not improved:
            break
    return thresholds, best, counts


def rule_text(
    observation: str,
    rule: DecisionRule | None,
    adjustment: float,
    overridden: bool,
    shown: Callable[[str, float], float] | None = None,
) -> str:
    """How the state shown for ``observation`` was decided, in words for the findings table.
    ``shown`` maps a threshold on the model's P(positive) to the scale the table shows (the
    weights' calibration, a monotone map, so the rule holds on either scale)."""
    if overridden:
        return "set by the reader"
    if observation == "No Finding":
        return "positive when no pathology is called"
    if rule is None:
        return f"likeliest state (prior × {adjustment:g})"
    threshold = rule.thresholds.get(observation, DEFAULT_THRESHOLD)
    if shown is not None:
        threshold = float(shown(observation, threshold))
    return f"positive at P(pos.) ≥ {threshold:.2f}"
