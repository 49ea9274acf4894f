"""The report writer: a FINDINGS section in the style of IU X-Ray and MIMIC-CXR, with its labels.

Every sentence is built together with the CheXpert values it states (1 present, 0
negated, -1 hedged), so a report's labels are what it says by construction, and the
observations a finding's sentence names decide which labels its masks belong to.
Sentences follow the order of a read (heart and mediastinum, lungs, pleura, bones), with
devices first or last and the heart sometimes after the lungs. Normal statements are
only made about what the phantom does not have.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..observations import OBSERVATIONS, PATHOLOGIES
from .findings import Finding

T = TypeVar("T")

# observation names, short
ECM, CM, LO, LESION, EDEMA, CONS, PNEU, ATEL, PTX, EFF, OTHER, FRACT, DEVICE = OBSERVATIONS[:13]
PARENCHYMA = {LO, LESION, EDEMA, CONS, PNEU, ATEL}


@dataclass(frozen=True)
class WrittenReport:
    """A report, its labels (all 14 observations) and what each finding's sentence states."""

    text: str
    labels: dict[str, int | None]
    mentions: tuple[frozenset[str], ...]  # per finding: the observations stated present or possible


@dataclass(frozen=True)
class _Sentence:
    text: str
    labels: Mapping[str, int]


class _Pen:
    """Phrase choices, all from one random generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def write_report(findings: Sequence[Finding], rng: np.random.Generator) -> WrittenReport:
    """Write the FINDINGS section for a phantom with these findings; pixels are not needed."""
    pen = _Pen(rng)
    stated = [_WRITERS[f.observation](f, pen) for f in findings]
    present = {f.observation for f in findings}
    by_section: dict[str, list[_Sentence]] = {s: [] for s in ("devices", "heart", "lungs", "pleura", "bones")}
    for f, sentence in zip(findings, stated):
        by_section[_SECTION[f.observation]].append(sentence)
    by_section["heart"] += _normal_heart(present, pen)
    by_section["lungs"] += _normal_lungs(present, pen)
    by_section["pleura"] += _normal_pleura(present, pen)
    by_section["bones"] += _normal_bones(present, pen)

    order = ["heart", "lungs", "pleura"] if pen.chance(0.65) else ["lungs", "pleura", "heart"]
    order = (["devices"] + order if pen.chance(0.4) else order + ["devices"]) + ["bones"]
    sentences = [s for section in order for s in by_section[section]]
    return WrittenReport(
        text=" ".join(s.text for s in sentences),
        labels=_aggregate(sentences),
        mentions=tuple(frozenset(o for o, v in s.labels.items() if v != 0) for s in stated),
    )


def _aggregate(sentences: list[_Sentence]) -> dict[str, int | None]:
    """CheXpert's rule: positive beats uncertain beats negative; No Finding when no pathology is 1 or -1."""
    labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
    rank = {None: 0, 0: 1, -1: 2, 1: 3}
    for sentence in sentences:
        for name, value in sentence.labels.items():
            if rank[value] > rank[labels[name]]:
                labels[name] = value
    labels["No Finding"] = None if any(labels[p] in (1, -1) for p in PATHOLOGIES) else 1
    return labels


# --- words ------------------------------------------------------------------------------------

# (adjective, prepositional phrase) for each side and zone of a lung
_PLACES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("right", "upper"): (
        ("right upper lobe", "in the right upper lobe"),
        ("right apical", "at the right apex"),
        ("right upper lung", "in the right upper lung"),
    ),
    ("right", "mid"): (
        ("right middle lobe", "in the right middle lobe"),
        ("right mid lung", "in the right mid lung"),
    ),
    ("right", "lower"): (
        ("right lower lobe", "in the right lower lobe"),
        ("right basilar", "at the right lung base"),
        ("right base", "at the right base"),
    ),
    ("left", "upper"): (
        ("left upper lobe", "in the left upper lobe"),
        ("left apical", "at the left apex"),
        ("left upper lung", "in the left upper lung"),
    ),
    ("left", "mid"): (
        ("lingular", "in the lingula"),
        ("left mid lung", "in the left mid lung"),
    ),
    ("left", "lower"): (
        ("left lower lobe", "in the left lower lobe"),
        ("left basilar", "at the left lung base"),
        ("left base", "at the left base"),
    ),
}
_SIZE = {"mild": "small", "moderate": "moderate", "severe": "large"}
_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}


def _place(f: Finding, pen: _Pen) -> tuple[str, str]:
    return pen.pick(_PLACES[(f.side or "right", f.zone or "lower")])


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _say(pen: _Pen, options: Sequence[str], labels: Mapping[str, int]) -> _Sentence:
    """One of several phrasings that state the same labels."""
    return _Sentence(_cap(pen.pick(options)), labels)


def _choose(pen: _Pen, options: Sequence[tuple[str, Mapping[str, int]]]) -> _Sentence:
    """One of several phrasings, each with the labels it states."""
    text, labels = pen.pick(options)
    return _Sentence(_cap(text), labels)


# --- one sentence per finding -------------------------------------------------------------------


def _mediastinum(f: Finding, pen: _Pen) -> _Sentence:
    if f.certainty < 0:
        return _say(pen, [
            "possible mediastinal widening.",
            "questionable widening of the mediastinum.",
            "borderline widening of the mediastinum.",
        ], {ECM: -1})
    adverb = _ADVERB[f.severity]
    return _say(pen, [
        "the mediastinum is widened.",
        "widened mediastinum.",
        "mediastinal widening.",
        f"the mediastinum is {adverb} widened.",
        f"the superior mediastinum is {adverb} widened.",
    ], {ECM: 1})


def _heart(f: Finding, pen: _Pen) -> _Sentence:
    if f.certainty < 0:
        return _say(pen, [
            "borderline cardiomegaly.",
            "heart size is borderline enlarged.",
            "possible mild cardiomegaly.",
            "borderline enlarged cardiac silhouette.",
        ], {CM: -1})
    grade, adverb = f.severity, _ADVERB[f.severity]
    return _say(pen, [
        f"{grade} cardiomegaly.",
        f"the heart is {adverb} enlarged.",
        f"{grade} enlargement of the cardiac silhouette.",
        f"the cardiac silhouette is {adverb} enlarged.",
    ] + (["marked cardiomegaly."] if f.severity == "severe" else []), {CM: 1})


def _opacity(f: Finding, pen: _Pen) -> _Sentence:
    adjective, where = _place(f, pen)
    if f.certainty < 0:
        return _say(pen, [
            f"possible subtle opacity {where}.",
            f"questionable {adjective} opacity.",
            f"possible faint airspace opacity {where}.",
        ], {LO: -1})
    quality = pen.pick({
        "mild": ("subtle", "faint", "mild"),
        "moderate": ("patchy", "moderate"),
        "severe": ("extensive patchy", "dense"),
    }[f.severity])
    return _say(pen, [
        f"{quality} {adjective} opacity.",
        f"there is a {quality} opacity {where}.",
        f"{quality} airspace opacity {where}.",
    ], {LO: 1})


def _lesion(f: Finding, pen: _Pen) -> _Sentence:
    adjective, where = _place(f, pen)
    size, noun = f"{f.measure:.1f} cm", "nodule" if f.kind == "nodule" else "mass"
    if f.certainty < 0:
        return _say(pen, [
            f"possible {noun} {where}.",
            f"questionable {adjective} {noun}.",
            f"a {noun} {where} cannot be excluded.",
        ], {LESION: -1})
    if noun == "nodule":
        options = [
            f"{size} nodule {where}.",
            f"there is a {size} {adjective} nodule.",
            f"{adjective} pulmonary nodule measuring {size}.",
            f"a {size} noncalcified nodule is seen {where}.",
        ]
    else:
        options = [
            f"{adjective} mass measuring {size}.",
            f"there is a {size} mass {where}.",
            f"a {size} {adjective} mass is present.",
        ]
    return _say(pen, options, {LESION: 1})


def _edema(f: Finding, pen: _Pen) -> _Sentence:
    if f.certainty < 0:
        return _say(pen, [
            "possible mild interstitial edema.",
            "cannot exclude mild pulmonary edema.",
            "mild pulmonary edema is not excluded.",
        ], {EDEMA: -1})
    return _say(pen, {
        "mild": [
            "mild pulmonary edema.",
            "mild interstitial edema.",
            "mild interstitial pulmonary edema with Kerley B lines.",
            "findings of mild interstitial edema.",
        ],
        "moderate": [
            "moderate pulmonary edema.",
            "moderate interstitial and perihilar edema with cephalization.",
            "moderate pulmonary edema with cephalization of the pulmonary vessels.",
        ],
        "severe": [
            "severe pulmonary edema.",
            "severe bilateral perihilar alveolar edema.",
            "marked pulmonary edema.",
        ],
    }[f.severity], {EDEMA: 1})


def _consolidation(f: Finding, pen: _Pen) -> _Sentence:
    adjective, where = _place(f, pen)
    if f.certainty < 0:
        return _say(pen, [
            f"possible early consolidation {where}.",
            f"consolidation {where} cannot be excluded.",
            f"questionable {adjective} consolidation.",
        ], {CONS: -1})
    quality = pen.pick({"mild": ("small", "focal"), "moderate": ("segmental", "focal"), "severe": ("dense", "lobar")}[
        f.severity])
    tail = " with air bronchograms." if f.kind == "bronchograms" else "."
    return _say(pen, [
        f"{adjective} consolidation{tail}",
        f"{quality} consolidation {where}{tail}",
        f"there is {quality} consolidation {where}{tail}",
    ], {CONS: 1})


def _pneumonia(f: Finding, pen: _Pen) -> _Sentence:
    adjective, where = _place(f, pen)
    if f.certainty < 0:
        return _choose(pen, [
            (f"{adjective} opacity, concerning for pneumonia.", {LO: 1, PNEU: -1}),
            (f"subtle opacity {where}, which may represent pneumonia.", {LO: 1, PNEU: -1}),
            (f"possible {adjective} pneumonia.", {PNEU: -1}),
            (f"cannot exclude early pneumonia {where}.", {PNEU: -1}),
        ])
    return _choose(pen, [
        (f"{adjective} pneumonia.", {PNEU: 1}),
        (f"{adjective} consolidation consistent with pneumonia.", {CONS: 1, PNEU: 1}),
        (f"airspace consolidation {where}, compatible with pneumonia.", {CONS: 1, PNEU: 1}),
        (f"patchy {adjective} opacity consistent with pneumonia.", {LO: 1, PNEU: 1}),
    ])


def _atelectasis(f: Finding, pen: _Pen) -> _Sentence:
    if f.side == "bilateral":
        region = "bibasilar" if f.zone == "lower" else "bilateral mid lung"
        if f.certainty < 0:
            return _say(pen, [f"possible {region} atelectasis.", f"questionable {region} atelectasis."], {ATEL: -1})
        return _say(pen, [
            f"{region} atelectasis.",
            f"{f.severity} {region} atelectasis.",
            f"{region} subsegmental atelectasis.",
            f"{region} plate-like atelectasis.",
        ], {ATEL: 1})
    adjective, where = _place(f, pen)
    if f.certainty < 0:
        return _say(pen, [f"possible {adjective} atelectasis.", f"questionable {adjective} atelectasis."], {ATEL: -1})
    volume_loss = [" with mild volume loss.", f" with elevation of the {f.side} hemidiaphragm."]
    tail = "." if f.severity == "mild" else pen.pick(volume_loss)
    return _say(pen, [
        f"plate-like atelectasis {where}{tail}",
        f"{f.severity} {adjective} atelectasis{tail}",
        f"linear atelectasis {where}{tail}",
        f"{adjective} subsegmental atelectasis{tail}",
    ], {ATEL: 1})


def _pneumothorax(f: Finding, pen: _Pen) -> _Sentence:
    side = f.side
    if f.certainty < 0:
        return _say(pen, [
            f"possible small {side} apical pneumothorax.",
            f"a small {side} apical pneumothorax cannot be excluded.",
            f"questionable tiny {side} apical pneumothorax.",
        ], {PTX: -1})
    return _say(pen, {
        "mild": [
            f"small {side} apical pneumothorax.",
            f"there is a small {side} pneumothorax.",
            f"tiny {side} apical pneumothorax.",
        ],
        "moderate": [
            f"moderate {side} pneumothorax.",
            f"moderate-sized {side} pneumothorax with a visible pleural line.",
        ],
        "severe": [
            f"large {side} pneumothorax.",
            f"there is a large {side} pneumothorax.",
        ],
    }[f.severity], {PTX: 1})


def _effusion(f: Finding, pen: _Pen) -> _Sentence:
    side, size = f.side, _SIZE[f.severity]
    if side == "bilateral":
        if f.certainty < 0:
            return _say(pen, [
                "possible small bilateral pleural effusions.",
                "questionable trace bilateral effusions.",
            ], {EFF: -1})
        return _say(pen, [f"{size} bilateral pleural effusions.", f"bilateral {size} pleural effusions."], {EFF: 1})
    if f.certainty < 0:
        return _say(pen, [
            f"possible small {side} pleural effusion.",
            f"trace {side} pleural effusion is not excluded.",
            f"blunting of the {side} costophrenic angle, which may represent a small effusion.",
        ], {EFF: -1})
    options = [
        f"{size} {side} pleural effusion.",
        f"there is a {size} {side} pleural effusion.",
        f"{size} {side} effusion.",
    ]
    if f.severity == "mild":
        options.append(f"small {side} pleural effusion with blunting of the costophrenic angle.")
    return _say(pen, options, {EFF: 1})


def _pleural_other(f: Finding, pen: _Pen) -> _Sentence:
    side = f.side
    if f.certainty < 0:
        noun = "pleural plaque" if f.kind == "plaques" else "pleural thickening"
        return _say(pen, [f"possible {side} {noun}.", f"questionable {side} {noun}."], {OTHER: -1})
    return _say(pen, {
        "thickening": [
            f"{side} pleural thickening.",
            f"mild {side} lateral pleural thickening.",
            f"there is {side} lateral pleural thickening.",
        ],
        "apical": [
            f"{side} apical pleural thickening.",
            f"{side} apical pleural capping.",
        ],
        "plaques": [
            f"calcified pleural plaques along the {side} chest wall.",
            f"{side} calcified pleural plaques.",
        ],
    }[f.kind], {OTHER: 1})


def _fracture(f: Finding, pen: _Pen) -> _Sentence:
    side, rib = f.side, _ordinal(int(f.measure or 6))
    if f.certainty < 0:
        return _say(pen, [
            f"possible nondisplaced fracture of the {side} {rib} rib.",
            f"questionable fracture of the {side} {rib} posterior rib.",
        ], {FRACT: -1})
    if f.kind == "healing":
        options = [
            f"healing fracture of the {side} {rib} rib.",
            f"healing {side} {rib} rib fracture with callus formation.",
        ]
    else:
        options = [
            f"acute fracture of the {side} {rib} posterior rib.",
            f"displaced fracture of the {side} {rib} rib.",
            f"there is a mildly displaced {side} {rib} rib fracture.",
        ]
    return _say(pen, options, {FRACT: 1})


def _device(f: Finding, pen: _Pen) -> _Sentence:
    side = f.side or "left"
    if f.kind == "ett":
        cm = f"{f.measure or 4:.0f} cm"
        options = [
            f"endotracheal tube terminates {cm} above the carina.",
            f"the endotracheal tube tip is {cm} above the carina.",
            f"endotracheal tube tip projects {cm} above the carina.",
        ]
    elif f.kind == "central_line" and side == "right":
        options = [
            "right internal jugular central venous catheter with tip in the SVC.",
            "right IJ central line terminates in the superior vena cava.",
            "right internal jugular catheter tip projects over the SVC.",
        ]
    elif f.kind == "central_line":
        options = [
            "left subclavian central venous catheter with tip in the SVC.",
            "left subclavian line terminates in the superior vena cava.",
        ]
    elif f.kind == "pacemaker":
        options = [
            f"{side} chest wall pacemaker with leads in the right atrium and right ventricle.",
            f"dual-lead {side}-sided pacemaker.",
            f"{side}-sided pacemaker with intact leads.",
        ]
    elif f.kind == "sternal_wires":
        options = [
            "median sternotomy wires are intact.",
            "intact median sternotomy wires.",
            "sternotomy wires are present.",
        ]
    else:
        options = [
            "enteric tube courses below the diaphragm.",
            "nasogastric tube tip is in the stomach.",
            "the enteric tube terminates in the stomach.",
        ]
    return _say(pen, options, {DEVICE: 1})


_WRITERS: dict[str, Callable[[Finding, _Pen], _Sentence]] = {
    ECM: _mediastinum, CM: _heart, LO: _opacity, LESION: _lesion, EDEMA: _edema, CONS: _consolidation,
    PNEU: _pneumonia, ATEL: _atelectasis, PTX: _pneumothorax, EFF: _effusion, OTHER: _pleural_other,
    FRACT: _fracture, DEVICE: _device,
}
_SECTION = {ECM: "heart", CM: "heart", PTX: "pleura", EFF: "pleura", OTHER: "pleura", FRACT: "bones",
            DEVICE: "devices", **{o: "lungs" for o in PARENCHYMA}}


# --- normal statements, only about what is absent -------------------------------------------


def _normal_heart(present: set[str], pen: _Pen) -> list[_Sentence]:
    if CM in present and ECM in present:
        return []
    if CM in present:
        if not pen.chance(0.5):
            return []
        return [_say(pen, ["the mediastinal contours are normal.", "normal mediastinal contours."], {ECM: 0})]
    if ECM in present:
        if not pen.chance(0.6):
            return []
        return [_say(pen, ["the heart is normal in size.", "heart size is normal."], {CM: 0})]
    if pen.chance(0.08):
        return []
    return [_choose(pen, [
        ("the heart is normal in size.", {CM: 0}),
        ("heart size is normal.", {CM: 0}),
        ("normal heart size.", {CM: 0}),
        ("the cardiomediastinal silhouette is within normal limits.", {ECM: 0}),
        ("normal cardiomediastinal silhouette.", {ECM: 0}),
        ("the cardiomediastinal silhouette and pulmonary vasculature are within normal limits.", {ECM: 0}),
        ("normal heart size and mediastinal contours.", {CM: 0, ECM: 0}),
        ("heart size and mediastinal contours are normal.", {CM: 0, ECM: 0}),
        ("the heart and mediastinum are within normal limits.", {CM: 0, ECM: 0}),
    ])]


def _normal_lungs(present: set[str], pen: _Pen) -> list[_Sentence]:
    """'The lungs are clear' when they are, plus zero to two explicit negatives that are true."""
    allowed: list[list[tuple[str, Mapping[str, int]]]] = []
    if not present & {CONS, PNEU, LO}:
        allowed.append([
            ("no focal consolidation.", {CONS: 0}),
            ("there is no focal airspace consolidation.", {CONS: 0}),
        ])
        allowed.append([
            ("no evidence of pneumonia.", {PNEU: 0}),
            ("no focal consolidation to suggest pneumonia.", {CONS: 0, PNEU: 0}),
        ])
    if not present & {LO, CONS, PNEU, EDEMA, ATEL}:
        allowed.append([("no focal airspace disease.", {LO: 0})])
    if EDEMA not in present:
        allowed.append([
            ("no pulmonary edema.", {EDEMA: 0}),
            ("there is no pulmonary edema.", {EDEMA: 0}),
            ("no evidence of pulmonary edema.", {EDEMA: 0}),
        ])
        allowed.append([("pulmonary vascularity is normal.", {}), ("normal pulmonary vascularity.", {})])
    if LESION not in present:
        allowed.append([
            ("no suspicious pulmonary nodules or masses.", {LESION: 0}),
            ("no pulmonary nodules.", {LESION: 0}),
        ])
    sentences = []
    if present & {PTX, EFF, OTHER} and not present & PARENCHYMA:
        sentences.append(_say(pen, ["the lungs are otherwise clear.", "otherwise, the lungs are clear."], {}))
    elif not present & PARENCHYMA:
        sentences.append(_say(pen, [
            "the lungs are clear.",
            "lungs are clear bilaterally.",
            "clear lungs.",
            "the lungs are well expanded and clear.",
            "both lungs are clear.",
        ], {}))
    for i in pen.rng.permutation(len(allowed))[: int(pen.rng.integers(0, 3))]:
        sentences.append(_choose(pen, allowed[int(i)]))
    return sentences


def _normal_pleura(present: set[str], pen: _Pen) -> list[_Sentence]:
    if pen.chance(0.1):
        return []
    if EFF not in present and PTX not in present:
        if not present & {CONS, PNEU, LO} and pen.chance(0.25):
            return [_Sentence("No focal consolidation, pleural effusion, or pneumothorax.", {CONS: 0, EFF: 0, PTX: 0})]
        return [_say(pen, [
            "no pleural effusion or pneumothorax.",
            "there is no pleural effusion or pneumothorax.",
            "no pneumothorax or pleural effusion.",
            "no pleural effusions or pneumothoraces.",
        ], {EFF: 0, PTX: 0})]
    if EFF not in present:
        return [_say(pen, ["no pleural effusion.", "there is no pleural effusion."], {EFF: 0})]
    if PTX not in present:
        return [_say(pen, ["no pneumothorax.", "there is no pneumothorax."], {PTX: 0})]
    return []


def _normal_bones(present: set[str], pen: _Pen) -> list[_Sentence]:
    if FRACT in present or pen.chance(0.4):
        return []
    return [_choose(pen, [
        ("no acute bony abnormality.", {}),
        ("no acute osseous abnormality.", {}),
        ("the osseous structures are intact.", {}),
        ("visualized osseous structures are unremarkable.", {}),
        ("no displaced rib fractures.", {FRACT: 0}),
        ("no acute fracture.", {FRACT: 0}),
    ])]
