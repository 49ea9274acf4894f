"""What a phantom set looks like: image size, how often each observation occurs, hedging rate."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..observations import OBSERVATIONS

# The long tail of the paper (supplementary Table 4): head observations common, tail rare.
# Values are the share of phantoms in which the observation is present (stated or hedged);
# "No Finding" is the share of phantoms without any pathology.
DEFAULT_PREVALENCE: dict[str, float] = {
    "Enlarged Cardiomediastinum": 0.10,
    "Cardiomegaly": 0.20,
    "Lung Opacity": 0.18,
    "Lung Lesion": 0.05,
    "Edema": 0.12,
    "Consolidation": 0.05,
    "Pneumonia": 0.05,
    "Atelectasis": 0.16,
    "Pneumothorax": 0.04,
    "Pleural Effusion": 0.18,
    "Pleural Other": 0.03,
    "Fracture": 0.04,
    "Support Devices": 0.20,
    "No Finding": 0.35,
}


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the generator. Missing prevalence keys take their default."""

    size: int = 256
    prevalence: dict[str, float] = field(default_factory=dict)
    uncertain_rate: float = 0.12  # share of present pathologies that the report only hedges
    marker_probability: float = 0.5  # lead "L"/"R" side marker burnt into a corner
    max_devices: int = 3

    def __post_init__(self) -> None:
        unknown = set(self.prevalence) - set(OBSERVATIONS)
        if unknown:
            raise ValueError(f"unknown observation(s) in prevalence: {sorted(unknown)}")
        merged = {**DEFAULT_PREVALENCE, **self.prevalence}
        bad = {k: v for k, v in merged.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"prevalence values must lie in [0, 1]: {bad}")
        if not 0.0 <= self.uncertain_rate <= 1.0 or self.size < 64:
            raise ValueError("uncertain_rate must lie in [0, 1] and size be at least 64")
        object.__setattr__(self, "prevalence", merged)
