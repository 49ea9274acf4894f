"""One phantom from (seed, index): anatomy, findings, pixels, masks and report together."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, build_scene, compose, sample_anatomy
from .config import PhantomConfig
from .findings import Finding, adjust_anatomy, render_findings, sample_findings
from .reports import write_report


@dataclass
class Phantom:
    """A synthetic frontal chest radiograph with its report, CheXpert labels and finding masks."""

    study_id: str
    image: np.ndarray  # float32 H x W in [0, 1], bone bright
    report: str
    labels: dict[str, int | None]  # all 14 observations: 1, 0, -1 or None, as the report states them
    masks: dict[str, list[np.ndarray]]  # observation -> one bool H x W mask per rendered instance
    findings: list[Finding] = field(default_factory=list)


def make_phantom(
    seed: int, index: int, config: PhantomConfig | None = None, findings: Sequence[Finding] | None = None
) -> Phantom:
    """Phantom number `index` of the set `seed`: a pure function of (seed, index, config).

    Anatomy, findings and wording draw from separate streams of
    ``np.random.default_rng([seed, index])``, so passing `findings` explicitly (tests,
    contact sheets) keeps the same patient.
    """
    config = config or PhantomConfig()
    anatomy_rng, findings_rng, report_rng = np.random.default_rng([seed, index]).spawn(3)
    anatomy = sample_anatomy(anatomy_rng, config.size, config.marker_probability)
    findings = list(sample_findings(findings_rng, config) if findings is None else findings)
    image, instance_masks = render(anatomy, findings)
    written = write_report(findings, report_rng)
    masks: dict[str, list[np.ndarray]] = {}
    for named, instances in zip(written.mentions, instance_masks):
        for observation in sorted(named):
            masks.setdefault(observation, []).extend(instances)
    return Phantom(f"synth-{seed}-{index:06d}", image, written.text, written.labels, masks, findings)


def render(anatomy: Anatomy, findings: Sequence[Finding]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """The image of `anatomy` with `findings`, and per finding its instance masks."""
    scene = build_scene(adjust_anatomy(anatomy, list(findings)))
    masks = render_findings(scene, list(findings))
    return compose(scene), masks
