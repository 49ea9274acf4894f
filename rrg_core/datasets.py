"""Dataset annotation files read into plain :class:`Study` records (no torch, no pixels).

Three layouts are recognised from the file's content:

- **R2Gen** (IU X-Ray, MIMIC-CXR): ``{"train": [...], "val": [...], "test": [...]}``, each
  entry with ``id``, ``report`` and ``image_path`` (a list, relative to ``<root>/images/``),
  and optionally ``labels``: a dict of CheXpert values (1, 0, -1, null) or null. IU X-Ray's
  ``source_images`` (one ``projection`` per image) is used to put frontal views first.
- **PromptMRG** (``mimic_annotation_promptmrg.json``: the same dict;
  ``iu_annotation_promptmrg.json``: a bare list, the whole of IU X-Ray used as a test set
  unless an entry names its ``split``): ``labels`` is a list of State indices (0 blank,
  1 positive, 2 negative, 3 uncertain) whose first 14 are the CheXbert observations in
  our OBSERVATIONS order. MIMIC's lists have 18: the last 4 (aorta,
  bone/spine, hemidiaphragm, lung volume abnormal, per the PromptMRG authors) have no
  CheXpert counterpart and are dropped.
- **SynthCXR**: R2Gen plus ``masks``: ``{observation: [paths relative to <root>/masks/]}``.

Studies without labels in the file are labelled from their report by
``rrg_core.labeler.label_report``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from .observations import OBSERVATIONS, State, labels_to_states, states_to_labels

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Looked for in <root>, in this order, when no annotation file is named.
ANNOTATION_NAMES: tuple[str, ...] = (
    "annotation.json",
    "mimic_annotation_promptmrg.json",
    "iu_annotation_promptmrg.json",
)


@dataclass
class Study:
    """One report with its images: the unit of training, retrieval and evaluation."""

    study_id: str  # the entry's "id" (for MIMIC-CXR R2Gen files a DICOM id, unique per entry)
    image_paths: list[Path]  # absolute, 1 or 2 views (frontal first where known)
    report: str  # raw report text as in the annotation
    split: str  # train | val | test
    labels: dict[str, int | None]  # CheXpert convention, all 14 observations
    labels_source: str  # "annotation" | "labeler"
    mask_paths: dict[str, list[Path]] = field(default_factory=dict)  # SynthCXR: observation -> instance PNGs


def load_annotation(
    root: str | Path, annotation: str | Path | None = None, check_files: bool = False
) -> dict[str, list[Study]]:
    """Read a dataset's annotation file into {"train": [...], "val": [...], "test": [...]}.

    ``annotation`` is resolved against ``root``; by default the first of ANNOTATION_NAMES
    found there is used. A split the file lacks comes back empty. With ``check_files``,
    a FileNotFoundError says how many image and mask files are missing, with an example.
    """
    root = Path(root)
    path = _annotation_path(root, annotation)
    splits = {split: [] for split in SPLITS}
    for split, entries in _split_entries(_read_json(path), path).items():
        splits[split] = [_study(entry, split, root, f"{path} [{split}][{i}]") for i, entry in enumerate(entries)]
    if check_files:
        _check_files(chain.from_iterable(splits.values()), path)
    return splits


def load_split(
    root: str | Path, split: str, annotation: str | Path | None = None, check_files: bool = False
) -> list[Study]:
    """One split (train | val | test) or "all" of them, in that order."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
    splits = load_annotation(root, annotation, check_files)
    return [s for name in SPLITS for s in splits[name]] if split == "all" else splits[split]


def report_texts(root: str | Path, annotation: str | Path | None = None) -> dict[str, str]:
    """study id -> raw report text for every split: attaches text at run time to a reference
    index shipped without it (weights trained on data whose reports may not be redistributed)."""
    return {study.study_id: study.report for study in load_split(root, "all", annotation)}


def label_priors(studies: Sequence[Study], smoothing: float = 1.0) -> np.ndarray:
    """[14, 4] frequency of each State per observation, additively smoothed; rows sum to 1.

    These are the class priors whose log the classifier adds to its logits (logit
    adjustment); smoothing keeps the log finite for a state never seen in training.
    """
    counts = np.full((len(OBSERVATIONS), len(State)), float(smoothing))
    rows = np.arange(len(OBSERVATIONS))
    for study in studies:
        counts[rows, labels_to_states(study.labels)] += 1
    totals = counts.sum(1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError("no studies and no smoothing: the priors are undefined")
    return counts / totals


def _annotation_path(root: Path, annotation: str | Path | None) -> Path:
    if annotation is not None:
        path = root / annotation
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        return path
    for name in ANNOTATION_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no annotation file in {root} (looked for {', '.join(ANNOTATION_NAMES)})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _split_entries(data: Any, path: Path) -> dict[str, list[Any]]:
    """The entries of each split, from the R2Gen dict or PromptMRG's bare IU list."""
    if isinstance(data, list):  # iu_annotation_promptmrg.json: all of IU X-Ray is a test set
        splits: dict[str, list[Any]] = {}
        for i, entry in enumerate(data):
            split = entry.get("split", "test") if isinstance(entry, dict) else "test"
            if split not in SPLITS:
                raise ValueError(f"{path} [{i}]: split must be one of {SPLITS}, got {split!r}")
            splits.setdefault(split, []).append(entry)
        return splits
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with {SPLITS} lists or a JSON list of entries")
    unknown = sorted(set(data) - set(SPLITS))
    if unknown or not data:
        raise ValueError(f"{path}: top-level keys must be among {SPLITS}, got {sorted(data)}")
    for split, entries in data.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path} [{split}]: expected a list of entries, got {type(entries).__name__}")
    return data


def _study(entry: Any, split: str, root: Path, where: str) -> Study:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [key for key in ("id", "report", "image_path") if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    images = entry["image_path"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise ValueError(f"{where}: image_path must be a non-empty list of paths, got {images!r}")
    if not isinstance(entry["report"], str):
        raise ValueError(f"{where}: report must be a string")
    labels, source = _annotation_labels(entry.get("labels"), where), "annotation"
    if labels is None:
        labels, source = _labeler_labels(entry["report"]), "labeler"
    return Study(
        study_id=str(entry["id"]),
        image_paths=[root / "images" / p for p in _frontal_first(images, entry.get("source_images"))],
        report=entry["report"],
        split=split,
        labels=labels,
        labels_source=source,
        mask_paths=_mask_paths(entry.get("masks", {}), root, where),
    )


def _frontal_first(images: list[str], sources: Any) -> list[str]:
    """IU X-Ray's ``source_images`` gives each image's projection: frontal ones go first."""
    known = isinstance(sources, list) and len(sources) == len(images)
    if not known or not all(isinstance(source, dict) for source in sources):
        return images
    order = sorted(range(len(images)), key=lambda i: sources[i].get("projection") != "Frontal")
    return [images[i] for i in order]


def _annotation_labels(raw: Any, where: str) -> dict[str, int | None] | None:
    """The file's labels as a full 14-key CheXpert dict, or None when it has none."""
    if raw is None:
        return None
    try:
        if isinstance(raw, dict):
            return states_to_labels(labels_to_states(raw))
        if isinstance(raw, list) and len(raw) in (14, 18):
            return states_to_labels([int(v) for v in raw[: len(OBSERVATIONS)]])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: bad labels: {err}") from None
    raise ValueError(
        f"{where}: labels must be a dict of CheXpert observations, a list of 14 or 18 "
        f"PromptMRG states, or null; got {raw!r}"
    )


def _mask_paths(raw: Any, root: Path, where: str) -> dict[str, list[Path]]:
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{where}: masks must map observations to lists of paths")
    unknown = sorted(set(raw) - set(OBSERVATIONS))
    if unknown:
        raise ValueError(f"{where}: masks for unknown observation(s) {unknown}")
    return {name: [root / "masks" / p for p in paths] for name, paths in raw.items()}


def _labeler_labels(report: str) -> dict[str, int | None]:
    """Labels for a study the annotation leaves unlabelled, from our CheXpert-style labeler."""
    from .labeler import label_report  # imported only when a file lacks labels

    return states_to_labels(labels_to_states(label_report(report)))


def _check_files(studies: Iterable[Study], path: Path) -> None:
    files = [p for s in studies for p in chain(s.image_paths, *s.mask_paths.values())]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} files listed in {path} are missing, e.g. {missing[0]}")
