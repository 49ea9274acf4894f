"""Sentences that state one finding, for repairing a draft that leaves it out.

Written for this project (no dataset text), in the lower-case style the decoders were trained
on, one list per (observation, state); ``{side}`` stands for "right " / "left " or nothing. Each
sentence is labelled by :func:`rrg_core.labeler.label_report` as exactly its own observation and
state, on every side (a test checks every entry), so a repaired report agrees with its findings
by construction. Several phrasings per entry let the decoder pick the one it finds most likely
(:meth:`rrg_core.decoder.ReportDecoder.sentence_scores`).
"""
from __future__ import annotations

from .observations import State

# Findings whose place on the film has a side the heatmap can show. Heart, mediastinum, edema
# and devices are described without one.
SIDED: frozenset[str] = frozenset(
    {
        "Lung Opacity", "Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
        "Pleural Effusion", "Pleural Other", "Fracture",
    }
)

_BANK: dict[tuple[str, State], tuple[str, ...]] = {
    ("Enlarged Cardiomediastinum", State.POSITIVE): (
        "the cardiomediastinal silhouette is enlarged",
        "the mediastinum is widened",
    ),
    ("Enlarged Cardiomediastinum", State.UNCERTAIN): (
        "the cardiomediastinal silhouette is possibly enlarged",
        "possible widening of the mediastinum",
    ),
    ("Cardiomegaly", State.POSITIVE): (
        "the heart is enlarged",
        "there is cardiomegaly",
        "the heart size is enlarged",
        "mild cardiomegaly",
    ),
    ("Cardiomegaly", State.UNCERTAIN): (
        "borderline cardiomegaly",
        "the heart size is borderline enlarged",
    ),
    ("Lung Opacity", State.POSITIVE): (
        "there is an opacity in the {side}lung",
        "patchy {side}basilar opacity",
        "there is {side}airspace opacity",
    ),
    ("Lung Opacity", State.UNCERTAIN): (
        "possible {side}basilar opacity",
        "questionable opacity in the {side}lung",
    ),
    ("Lung Lesion", State.POSITIVE): (
        "there is a nodule in the {side}lung",
        "there is a {side}lung mass",
    ),
    ("Lung Lesion", State.UNCERTAIN): (
        "possible nodule in the {side}lung",
        "questionable {side}lung nodule",
    ),
    ("Edema", State.POSITIVE): (
        "there is pulmonary edema",
        "there is mild interstitial edema",
    ),
    ("Edema", State.UNCERTAIN): (
        "possible mild pulmonary edema",
        "questionable mild interstitial edema",
    ),
    ("Consolidation", State.POSITIVE): (
        "there is consolidation in the {side}lung",
        "there is {side}basilar consolidation",
    ),
    ("Consolidation", State.UNCERTAIN): (
        "possible consolidation in the {side}lung",
        "questionable {side}basilar consolidation",
    ),
    ("Pneumonia", State.POSITIVE): (
        "findings are consistent with {side}pneumonia",
        "there is {side}pneumonia",
    ),
    ("Pneumonia", State.UNCERTAIN): (
        "possible {side}pneumonia",
        "findings may represent {side}pneumonia",
    ),
    ("Atelectasis", State.POSITIVE): (
        "there is {side}basilar atelectasis",
        "{side}basilar atelectasis",
        "there is atelectasis in the {side}lung",
    ),
    ("Atelectasis", State.UNCERTAIN): (
        "possible {side}basilar atelectasis",
        "questionable atelectasis in the {side}lung",
    ),
    ("Pneumothorax", State.POSITIVE): (
        "there is a {side}pneumothorax",
        "small {side}pneumothorax",
    ),
    ("Pneumothorax", State.UNCERTAIN): (
        "possible small {side}pneumothorax",
        "questionable {side}pneumothorax",
    ),
    ("Pleural Effusion", State.POSITIVE): (
        "there is a {side}pleural effusion",
        "small {side}pleural effusion",
    ),
    ("Pleural Effusion", State.UNCERTAIN): (
        "possible small {side}pleural effusion",
        "questionable {side}pleural effusion",
    ),
    ("Pleural Other", State.POSITIVE): (
        "there is {side}pleural thickening",
        "{side}pleural thickening",
    ),
    ("Pleural Other", State.UNCERTAIN): (
        "possible {side}pleural thickening",
        "questionable {side}pleural thickening",
    ),
    ("Fracture", State.POSITIVE): (
        "there is a {side}rib fracture",
        "{side}rib fracture",
    ),
    ("Fracture", State.UNCERTAIN): (
        "possible {side}rib fracture",
        "questionable {side}rib fracture",
    ),
    ("Support Devices", State.POSITIVE): (
        "support devices are in place",
        "a central venous catheter is in place",
    ),
    ("Support Devices", State.UNCERTAIN): (
        "possible support device",
        "questionable catheter",
    ),
}


def sentences_for(observation: str, state: int, side: str | None = None) -> list[str]:
    """The bank's sentences stating ``observation`` in ``state`` (positive or uncertain), on
    ``side`` ("right", "left" or None) where the finding has one."""
    try:
        templates = _BANK[(observation, State(state))]
    except (KeyError, ValueError):
        raise ValueError(f"no sentence for {observation!r} in state {state!r}: only positive or uncertain findings "
                         "other than No Finding are stated") from None
    prefix = f"{side} " if side and observation in SIDED else ""
    return [t.format(side=prefix) for t in templates]
