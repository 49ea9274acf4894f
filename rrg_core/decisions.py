"""Which state each finding is drafted in: per-observation thresholds on P(positive), the
reader's overrides, and one rule that keeps the states coherent.

Thresholds are tuned on validation data for each observation's F1 of positives and saved
beside the weights in ``decision.json`` (a small sidecar, so tuning never rewrites
``model.safetensors``). A finding is positive when its P(positive) reaches its threshold;
otherwise it takes the most probable of the other three states. Weights without the sidecar
keep the argmax rule of :meth:`rrg_core.diagnosis.DiagnosisHead.decide`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .observations import OBSERVATIONS, PATHOLOGIES, STATE_NAMES, State

DECISION_NAME = "decision.json"
NO_FINDING = OBSERVATIONS.index("No Finding")
_PATHOLOGY_INDICES = [OBSERVATIONS.index(o) for o in PATHOLOGIES]
# Accepted spellings of a state in overrides (CLI, API, demo).
_STATE_WORDS = {**{name: State(i) for i, name in enumerate(STATE_NAMES)}, "blank": State.BLANK}
# Observations with fewer validation positives than this keep the posterior's majority (0.5).
MIN_POSITIVES = 8
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds on P(positive), one per observation (No Finding's state is derived instead)."""

    thresholds: dict[str, float]
    criterion: str = "per-observation F1 of positives on the validation split"
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
        if isinstance(value, str):
            state = _STATE_WORDS.get(value.strip().lower())
        else:
            state = State(value) if value in set(State) else None
        if state is None:
            raise ValueError(f"unknown state {value!r} for {observation}; choose positive, negative, uncertain or blank")
        out[observation] = state
    return out


def apply_overrides(states: np.ndarray, overrides: Mapping[str, State]) -> np.ndarray:
    """One study's states [14] with the reader's overrides, made coherent. Overriding No Finding
    to positive marks the study normal: every pathology the reader did not set becomes negative."""
    states = np.array(states, dtype=np.int64, copy=True)
    for name, state in overrides.items():
        states[OBSERVATIONS.index(name)] = state
    if overrides.get("No Finding") == State.POSITIVE:
        for i in _PATHOLOGY_INDICES:
            if OBSERVATIONS[i] not in overrides and states[i] in (State.POSITIVE, State.UNCERTAIN):
                states[i] = State.NEGATIVE
    return coherent(states)


def fit_thresholds(
    p_positive: np.ndarray, positive: np.ndarray, *, min_positives: int = MIN_POSITIVES
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Per observation, the threshold on P(positive) with the best F1 of positives on validation
    data ``p_positive`` [N, 14] against ``positive`` [N, 14] (bool). Candidates are the midpoints
    between observed probabilities; ties go to the higher threshold (fewer false alarms).
    Returns thresholds, their validation F1 and the positives counted."""
    thresholds, f1s, counts = {}, {}, {}
    for j, name in enumerate(OBSERVATIONS):
        scores, truth = np.asarray(p_positive[:, j], dtype=np.float64), np.asarray(positive[:, j], dtype=bool)
        counts[name] = int(truth.sum())
        if name == "No Finding":
            continue  # derived, see coherent()
        if counts[name] < min_positives:
            thresholds[name] = DEFAULT_THRESHOLD
            continue
        values = np.unique(scores)
        candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]])
        best = (-1.0, 0.0)
        for t in candidates:
            predicted = scores >= t
            tp = int((predicted & truth).sum())
            f1 = 2 * tp / max(1, int(predicted.sum()) + counts[name])
            if f1 >= best[0]:
                best = (f1, float(t))
        f1s[name], thresholds[name] = best[0], min(1.0, best[1])
    return thresholds, f1s, counts


def rule_text(observation: str, rule: DecisionRule | None, adjustment: float, overridden: bool) -> str:
    """How the state shown for ``observation`` was decided, in words for the findings table."""
    if overridden:
        return "set by the reader"
    if observation == "No Finding":
        return "positive only when no pathology is positive or uncertain"
    if rule is None:
        return f"most probable state (prior adjustment {adjustment:g})"
    return f"positive if P(pos.) ≥ {rule.thresholds.get(observation, DEFAULT_THRESHOLD):.2f}"

