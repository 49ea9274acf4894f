"""The input gate: is this a chest radiograph at all, and is it like the images these weights
were trained on? And, for every retrieved reference, how close is it compared with the matches
of typical studies?

Two verdicts, both from what :meth:`ReportPipeline.generate` computes anyway (cheap image statistics of
the model's input, the pooled visual features and the entity scores):

- **Not a chest radiograph** (refused: the draft is meaningless and should not be shown): a
  colour image (the file's own chroma, :attr:`XRay.colour`), or a logistic check on image
  statistics (symmetry, the bright mediastinum between dark lungs, histogram, edges) fitted on
  radiographs against synthetic non-radiographs (:mod:`rrg_core.negatives`) and radiographs
  turned on their side.
- **Out of distribution** (flagged: the draft is shown, greyed, under a warning): a
  Mahalanobis distance of [statistics, pooled features, entity scores] from the training
  images' (principal subspace plus the residual), whose threshold is a high quantile of the
  scores of held-out in-distribution studies.

The parameters live beside ``model.safetensors`` in ``gate.json`` (scalars, quantiles, what the
weights were trained on) and ``gate.safetensors`` (vectors and matrices): numbers only, fitted
by ``python -m train.fit_gate`` (also run by ``train.release``). A folder without them has no
gate, and every report says so (``Report.input_check`` is None).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy.optimize import minimize
from scipy.special import expit
from torch import Tensor

from .observations import OBSERVATIONS, State
from .outputs import InputCheck, Report

if TYPE_CHECKING:
    from .calibration import Calibration
    from .model import REVTAF, Encoding

GATE_JSON = "gate.json"
GATE_TENSORS = "gate.safetensors"
FORMAT = "rrg-gate/1"
COLOUR_LIMIT = 0.06  # mean chroma above which an image is a colour picture (an RGB-stored radiograph has 0)
STAT_SIDE = 64
STATISTICS = (
    "mean", "std", "dark share", "bright share", "entropy", "left-right symmetry", "top-bottom symmetry",
    "column profile", "row profile", "top-bottom difference", "edge energy", "strong edges", "fine detail",
)
COLOUR_REFUSAL = "This is a colour picture, not a chest radiograph: no draft is shown."
STATISTICS_REFUSAL = ("This does not look like an upright chest radiograph (it may be a photograph, a document, "
                      "another kind of image, or a film turned on its side): no draft is shown.")


def image_statistics(pixels: Tensor) -> Tensor:
    """[B, H, W] grayscale in [0, 1] -> [B, len(STATISTICS)]: what tells an upright chest film
    from other pictures, measured at 64 x 64 (so the input resolution hardly matters)."""
    x = F.interpolate(pixels[:, None].float(), size=(STAT_SIDE, STAT_SIDE), mode="area")[:, 0].clamp(0, 1)
    flat = x.flatten(1)
    mean, std = flat.mean(1), flat.std(1).clamp(min=1e-3)
    histogram = F.one_hot((flat * 15.999).long(), 16).float().mean(1)
    entropy = -(histogram * histogram.clamp(min=1e-9).log()).sum(1)
    z = (x - mean[:, None, None]) / std[:, None, None]
    columns, rows = x.mean(1), x.mean(2)

    def profile(p: Tensor) -> Tensor:  # bright middle band between two darker bands (mediastinum, lungs)
        return (p[:, 27:37].mean(1) - 0.5 * (p[:, 10:22].mean(1) + p[:, 42:54].mean(1))) / std

    gx, gy = x[:, :-1, 1:] - x[:, :-1, :-1], x[:, 1:, :-1] - x[:, :-1, :-1]
    gradient = (gx**2 + gy**2).sqrt()
    laplacian = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return torch.stack([
        mean, std, (flat < 0.05).float().mean(1), (flat > 0.95).float().mean(1), entropy,
        (z * z.flip(-1)).mean((1, 2)), (z * z.flip(-2)).mean((1, 2)), profile(columns), profile(rows),
        (rows[:, :16].mean(1) - rows[:, 48:].mean(1)) / std, gradient.mean((1, 2)) / std,
        (gradient > 0.25).float().mean((1, 2)), laplacian.abs().mean((1, 2)) / std,
    ], dim=1)


def gate_features(model: REVTAF, images: Tensor, encoded: Encoding) -> tuple[Tensor, Tensor]:
    """(statistics of the frontal view [B, S], all features [B, F]) of a batch the model encoded."""
    c = model.config
    frontal = (images[:, 0, 0].float() * c.vision.image_std + c.vision.image_mean).clamp(0, 1)
    stats = image_statistics(frontal.cpu())
    parts = [stats, encoded.visual.pooled.float().cpu()]
    if encoded.entity_logits is not None:
        parts.append(encoded.entity_logits.float().cpu())
    return stats, torch.cat(parts, dim=1)


@dataclass
class Observation:
    """What fitting and measuring the gate and the calibration need from a batch of studies."""

    stats: Tensor  # [B, S]
    features: Tensor  # [B, F]
    distances: Tensor  # [B, k] of the retrieved references
    p_positive: Tensor  # [B, 14] raw P(positive)


@torch.no_grad()
def observe(model: REVTAF, images: Tensor) -> Observation:
    """Run the image side, retrieval and diagnosis (no decoder) on a batch [B, V, 1, H, W]."""
    encoding = model.encode(images)
    diagnosis = model.diagnose(encoding)
    stats, features = gate_features(model, images, encoding)
    return Observation(stats, features, diagnosis.distances.cpu(), diagnosis.probabilities[..., State.POSITIVE].cpu())


@dataclass
class Gate:
    """The fitted parameters of one weights folder's gate."""

    trained_on: str  # shown to users: "synthetic phantoms", "real chest radiographs (IU X-Ray)"
    mean: Tensor  # [F] feature standardisation
    scale: Tensor  # [F]
    components: Tensor  # [k, F] principal directions of the standardised in-distribution features
    variances: Tensor  # [k] their variances
    residual: float  # mean squared norm of what the k directions leave
    threshold: float  # OOD score above which an image is out of distribution
    radiograph_weights: Tensor  # [S] logistic check on standardised statistics
    radiograph_bias: float
    radiograph_cutoff: float  # logits below it are refused
    distance_quantiles: Tensor  # [Q] quantiles of held-out studies' nearest-reference (top-1) distances
    fitted_on: str  # provenance, for the card

    # ---------------------------------------------------------------- scores
    def score(self, features: Tensor) -> Tensor:
        """OOD score per row of [B, F] features: about 1 for in-distribution images."""
        z = (features - self.mean) / self.scale
        projected = z @ self.components.T
        residual = z - projected @ self.components
        squared = (projected**2 / self.variances).sum(1) + (residual**2).sum(1) / self.residual
        return (squared / (len(self.variances) + 1)).sqrt()

    def radiograph_logit(self, stats: Tensor) -> Tensor:
        """Log-odds that [B, S] statistics come from an upright chest radiograph."""
        s = len(STATISTICS)
        z = (stats - self.mean[:s]) / self.scale[:s]
        return z @ self.radiograph_weights + self.radiograph_bias

    def closer_than(self, distance: float) -> float:
        """Share of typical matches (held-out studies' nearest references) farther away than ``distance``."""
        q = self.distance_quantiles.numpy()
        return float(1 - np.interp(distance, q, np.linspace(0, 1, len(q)), left=0.0, right=1.0))

    def check(self, stats: Tensor, features: Tensor) -> list[InputCheck]:
        scores, logits = self.score(features), self.radiograph_logit(stats)
        return [
            InputCheck(
                radiograph=bool(logit >= self.radiograph_cutoff),
                refusal=None if logit >= self.radiograph_cutoff else STATISTICS_REFUSAL,
                ood_score=float(score), ood_threshold=self.threshold, trained_on=self.trained_on,
            )
            for score, logit in zip(scores.tolist(), logits.tolist())
        ]

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        fit: Observation,
        held_out: Observation,
        negative_stats: Tensor,
        *,
        trained_on: str,
        fitted_on: str,
        extra_radiograph_stats: Tensor | None = None,
        quantile: float = 0.98,
        max_components: int = 48,
        explained: float = 0.95,
    ) -> Gate:
        """``fit``: in-distribution studies for the feature distribution; ``held_out``: other
        in-distribution studies for the threshold (its ``quantile`` of their scores), the distance
        scale and the refusal cutoff (at most 0.5 % of them refused); ``negative_stats``: statistics
        of non-radiographs; ``extra_radiograph_stats``: other radiographs (e.g. real films for
        weights trained on phantoms) that must not be refused either."""
        mean = fit.features.mean(0)
        scale = fit.features.std(0).clamp(min=1e-4)
        z = (fit.features - mean) / scale
        variances, vectors = torch.linalg.eigh(z.T @ z / (len(z) - 1))
        variances, vectors = variances.flip(0).clamp(min=1e-6), vectors.flip(1)
        k = int(min(max_components, (variances.cumsum(0) / variances.sum() < explained).sum() + 1))
        components = vectors[:, :k].T.contiguous()
        residual = z - (z @ components.T) @ components
        gate = cls(trained_on, mean, scale, components, variances[:k].contiguous(),
                   float((residual**2).sum(1).mean()), 0.0, torch.zeros(len(STATISTICS)), 0.0, 0.0,
                   torch.quantile(held_out.distances[:, 0].float(), torch.linspace(0, 1, 101)), fitted_on)
        gate.threshold = float(torch.quantile(gate.score(held_out.features), quantile))

        positives = [fit.stats, held_out.stats] + ([extra_radiograph_stats] if extra_radiograph_stats is not None else [])
        gate.radiograph_weights, gate.radiograph_bias = _logistic(gate, torch.cat(positives), negative_stats)
        held = gate.radiograph_logit(torch.cat([held_out.stats] + positives[2:]))
        gate.radiograph_cutoff = float(min(0.0, torch.quantile(held, 0.005)))
        return gate

    # ---------------------------------------------------------------- files
    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        save_file({"mean": self.mean, "scale": self.scale, "components": self.components, "variances": self.variances,
                   "radiograph_weights": self.radiograph_weights, "distance_quantiles": self.distance_quantiles},
                  str(folder / GATE_TENSORS))
        scalars = {"format": FORMAT, "trained_on": self.trained_on, "fitted_on": self.fitted_on,
                   "threshold": self.threshold, "residual": self.residual, "radiograph_bias": self.radiograph_bias,
                   "radiograph_cutoff": self.radiograph_cutoff, "colour_limit": COLOUR_LIMIT,
                   "statistics": list(STATISTICS)}
        (folder / GATE_JSON).write_text(json.dumps(scalars, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike, n_features: int) -> Gate | None:
        """The folder's gate; None where it has none (no gate.json); ValueError (one sentence)
        when the files are damaged or were fitted for a different model."""
        folder = Path(folder)
        if not (folder / GATE_JSON).is_file():
            return None
        try:
            scalars = json.loads((folder / GATE_JSON).read_text())
            if scalars.get("format") != FORMAT or scalars.get("statistics") != list(STATISTICS):
                raise ValueError(f"format {scalars.get('format')!r}, this version reads {FORMAT!r}")
            t = load_file(str(folder / GATE_TENSORS))
            gate = cls(
                str(scalars["trained_on"]), t["mean"], t["scale"], t["components"], t["variances"],
                float(scalars["residual"]), float(scalars["threshold"]), t["radiograph_weights"],
                float(scalars["radiograph_bias"]), float(scalars["radiograph_cutoff"]), t["distance_quantiles"],
                str(scalars.get("fitted_on", "")),
            )
            shapes = (gate.mean.shape, gate.scale.shape, gate.components.shape[1:], gate.radiograph_weights.shape)
            if shapes != ((n_features,), (n_features,), (n_features,), (len(STATISTICS),)):
                raise ValueError(f"it was fitted for {gate.mean.shape[0]} features, these weights have {n_features}")
            if not all(math.isfinite(v) for v in (gate.threshold, gate.residual, gate.radiograph_cutoff)):
                raise ValueError("its threshold is not a finite number")
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise ValueError(f"the input gate in {folder} ({GATE_JSON}, {GATE_TENSORS}) cannot be used ({err}): "
                             "delete both files or fit them again with python -m train.fit_gate") from err
        return gate


def n_gate_features(model: REVTAF) -> int:
    """How many features the gate of ``model`` reads."""
    entity = len(model.config.text.prompts) if model.entity_scores is not None else 0
    return len(STATISTICS) + model.config.d_model + entity


def _logistic(gate: Gate, positive: Tensor, negative: Tensor, l2: float = 1e-2) -> tuple[Tensor, float]:
    """L2-regularised logistic regression of radiograph (1) against not (0) on standardised
    statistics, each class weighted equally."""
    s = len(STATISTICS)
    x = torch.cat([positive, negative]).double()
    x = ((x - gate.mean[:s].double()) / gate.scale[:s].double()).numpy()
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    w = np.where(y == 1, 0.5 / len(positive), 0.5 / len(negative))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:s] + theta[s]
        value = (w * (np.logaddexp(0, z) - y * z)).sum() + l2 * (theta[:s] ** 2).sum()
        residual = w * (expit(z) - y)
        return value, np.r_[x.T @ residual + 2 * l2 * theta[:s], residual.sum()]

    theta = minimize(loss, np.zeros(s + 1), jac=True, method="L-BFGS-B").x
    return torch.tensor(theta[:s], dtype=torch.float32), float(theta[s])


def annotate(
    reports: Sequence[Report], gate: Gate | None, calibration: Calibration | None, stats: Tensor | None,
    features: Tensor | None,
) -> None:
    """Add the gate's verdict (from :func:`gate_features`, which the caller computes only when
    there is a gate), reference percentiles and calibrated P(positive) to fresh reports."""
    if calibration is not None:
        for report in reports:
            report.calibrated = {o: calibration.calibrate(o, report.probabilities[o][State.POSITIVE])
                                 for o in OBSERVATIONS}
    if gate is None:
        return
    for report, check in zip(reports, gate.check(stats, features)):
        report.input_check = check
        for reference in report.references:
            reference.closer_than = gate.closer_than(reference.distance)


def refuse_colour(reports: Sequence[Report], colours: Sequence[float]) -> None:
    """Refuse colour pictures (a study's largest :attr:`XRay.colour`); gated reports only."""
    for report, colour in zip(reports, colours):
        if report.input_check is not None and colour > COLOUR_LIMIT:
            report.input_check.radiograph = False
            report.input_check.refusal = COLOUR_REFUSAL
