"""Calibrated P(positive): one monotone map per observation, fitted on validation data.

The diagnosis head's P(positive) is a posterior trained with logit adjustment on imbalanced
labels, and it is often far too sure (0.999 for a device on a film that has none). Platt scaling
on logit(p), ``sigmoid(a * logit(p) + b)`` with a > 0, fixes the scale without changing the
order of the probabilities, so a decision threshold t on the raw scale is the threshold
``calibrate(observation, t)`` on the calibrated one. Rare observations get Platt's smoothed
targets ((n+ + 1) / (n+ + 2) and 1 / (n- + 2)) so that a validation split with no positive does
not drive the map to 0.

The parameters live in ``calibration.json`` beside ``model.safetensors`` (numbers only).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .observations import OBSERVATIONS

CALIBRATION_NAME = "calibration.json"
FORMAT = "rrg-calibration/1"
BINS = 15
_EPS = 1e-6
_MIN_SLOPE = 0.05  # keeps the map strictly increasing


@dataclass
class Calibration:
    """Platt parameters (slope a > 0, offset b) per observation, and where they were fitted."""

    parameters: dict[str, tuple[float, float]]
    fitted_on: str

    def calibrate(self, observation: str, p: float | np.ndarray) -> float | np.ndarray:
        """The calibrated P(positive) of ``observation`` for raw P(positive) ``p`` (a scalar or an
        array); also maps a raw decision threshold to the calibrated scale."""
        a, b = self.parameters[observation]
        q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
        out = expit(a * np.log(q / (1 - q)) + b)
        return float(out) if np.ndim(out) == 0 else out

    def calibrate_all(self, p: np.ndarray) -> np.ndarray:
        """[N, 14] raw P(positive), OBSERVATIONS order -> calibrated."""
        return np.stack([self.calibrate(o, p[:, i]) for i, o in enumerate(OBSERVATIONS)], axis=1)

    @classmethod
    def fit(cls, p: np.ndarray, positive: np.ndarray, fitted_on: str) -> Calibration:
        """p [N, 14] raw P(positive), positive [N, 14] bool truth (validation data)."""
        return cls({o: _platt(p[:, i], positive[:, i]) for i, o in enumerate(OBSERVATIONS)}, fitted_on)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CALIBRATION_NAME
        payload = {"format": FORMAT, "method": "platt on logit(P(positive))", "fitted_on": self.fitted_on,
                   "parameters": {o: {"a": a, "b": b} for o, (a, b) in self.parameters.items()}}
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Calibration | None:
        """The folder's calibration, None where it has none; ValueError (one sentence) if unreadable."""
        path = Path(folder) / CALIBRATION_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            parameters = {o: (float(data["parameters"][o]["a"]), float(data["parameters"][o]["b"])) for o in OBSERVATIONS}
            if not all(a > 0 and math.isfinite(a) and math.isfinite(b) for a, b in parameters.values()):
                raise ValueError("every slope must be positive and finite")
            return cls(parameters, str(data.get("fitted_on", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a valid calibration file ({err}): delete it or fit it again "
                             "with python -m train.fit_gate") from err


def _platt(p: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's (a, b) for one observation, by maximum likelihood on smoothed targets."""
    x = np.log(np.clip(p, _EPS, 1 - _EPS) / np.clip(1 - p, _EPS, 1))
    n_pos = int(positive.sum())
    target = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (len(p) - n_pos + 2))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a = _MIN_SLOPE + np.exp(theta[0])
        z = a * x + theta[1]
        log_q, log_not_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        value = -(target * log_q + (1 - target) * log_not_q).mean()
        residual = expit(z) - target
        return value, np.array([(residual * x).mean() * (a - _MIN_SLOPE), residual.mean()])

    theta = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x
    return float(_MIN_SLOPE + np.exp(theta[0])), float(theta[1])


def reliability(p: np.ndarray, positive: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of predicted probability: mean prediction, observed frequency, count."""
    p, positive = np.ravel(p), np.ravel(positive).astype(np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, p, bins) / np.maximum(counts, 1)
    frequency = np.bincount(which, positive, bins) / np.maximum(counts, 1)
    return mean_p, frequency, counts


def expected_calibration_error(p: np.ndarray, positive: np.ndarray, bins: int = BINS) -> float:
    """ECE: the count-weighted mean |observed frequency - mean prediction| over equal-width bins."""
    mean_p, frequency, counts = reliability(p, positive, bins)
    return float((counts * np.abs(frequency - mean_p)).sum() / max(counts.sum(), 1))
