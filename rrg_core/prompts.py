"""The fixed region/entity prompts of FVTAF and LRE.

REVTAF reads 75 region/entity scores from a frozen MedKLIP. We instead embed a fixed,
documented list of anatomical regions and findings with our own text encoder and score
each against the image patches (see :mod:`rrg_core.fvtaf`). The finding prompts line up
with the 13 CheXpert pathologies/devices, so their scores can be supervised by the
labels; the region prompts stay unsupervised and give the LRE a layout signature.
"""
from __future__ import annotations

from .observations import OBSERVATIONS

# One entity prompt per observation except No Finding (which is an absence, not a place).
FINDING_PROMPTS: dict[str, str] = {
    "Enlarged Cardiomediastinum": "widened mediastinum with enlarged cardiomediastinal silhouette",
    "Cardiomegaly": "enlarged heart, cardiomegaly",
    "Lung Opacity": "lung opacity",
    "Lung Lesion": "lung nodule or mass",
    "Edema": "pulmonary edema with vascular congestion",
    "Consolidation": "airspace consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Fracture": "rib fracture",
    "Support Devices": "support devices, tubes, lines and wires",
}

REGION_PROMPTS: tuple[str, ...] = (
    "right upper lung zone",
    "right mid lung zone",
    "right lower lung zone",
    "left upper lung zone",
    "left mid lung zone",
    "left lower lung zone",
    "right lung apex",
    "left lung apex",
    "right costophrenic angle",
    "left costophrenic angle",
    "right hilum",
    "left hilum",
    "cardiac silhouette",
    "mediastinum",
    "trachea",
    "aortic knob",
    "right hemidiaphragm",
    "left hemidiaphragm",
    "thoracic spine",
    "ribs",
    "clavicles",
)

# Order matters: finding prompts first (their indices match OBSERVATIONS[:13]).
DEFAULT_PROMPTS: tuple[str, ...] = tuple(FINDING_PROMPTS[o] for o in OBSERVATIONS if o in FINDING_PROMPTS) + REGION_PROMPTS
N_FINDING_PROMPTS = len(FINDING_PROMPTS)
assert tuple(FINDING_PROMPTS) == OBSERVATIONS[:N_FINDING_PROMPTS], "finding prompts must follow OBSERVATIONS order"
