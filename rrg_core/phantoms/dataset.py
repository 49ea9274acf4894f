"""Writing a phantom set to disk in the R2Gen layout (plus masks, optionally DICOM).

The layout is the one the training code reads for IU X-Ray and MIMIC-CXR, so the
default model trains on phantoms like on any other dataset::

    annotation.json            {"train": [...], "val": [...], "test": [...]}
    images/<id>/0.png          8-bit grayscale
    masks/<id>/<slug>_<k>.png  8-bit 0/255, one per finding instance
    dicom/<id>.dcm             with dicom=True: a DX object as a scanner would send it
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from ..xray_io import to_uint8
from .config import PhantomConfig
from .generator import Phantom, make_phantom

SPLITS: tuple[str, ...] = ("train", "val", "test")
DETECTOR_MM = 430.0  # a 43 cm detector across the image


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 256,
    dicom: bool = False,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    config: PhantomConfig | None = None,
    workers: int = 1,
) -> Path:
    """Generate phantoms 0..n-1 of set `seed` into `out_dir`; returns `out_dir`.

    Phantoms are assigned to train/val/test in index order by the `splits` shares;
    `size` overrides ``config.size``. Phantom i is the same whatever `n` or `workers`.
    """
    if len(splits) != 3 or any(s < 0 for s in splits) or not np.isclose(sum(splits), 1.0):
        raise ValueError(f"splits must be three non-negative shares summing to 1, got {splits}")
    config = replace(config or PhantomConfig(), size=size)
    root = Path(out_dir)
    for sub in ("images", "masks") + (("dicom",) if dicom else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum([round(n * s) for s in splits[:2]])
    split_of = [SPLITS[int(np.searchsorted(bounds, i, side="right"))] for i in range(n)]

    job = partial(_write_one, root=root, seed=seed, config=config, dicom=dicom)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            entries = list(pool.map(job, range(n), split_of, chunksize=max(1, n // (8 * workers))))
    else:
        entries = list(map(job, range(n), split_of))
    annotation = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
    (root / "annotation.json").write_text(json.dumps(annotation, indent=1))
    return root


def mask_slug(observation: str) -> str:
    """File-name form of an observation: 'Pleural Effusion' -> 'pleural_effusion'."""
    return observation.lower().replace(" ", "_")


def _write_one(index: int, split: str, root: Path, seed: int, config: PhantomConfig, dicom: bool) -> dict[str, Any]:
    phantom = make_phantom(seed, index, config)
    sid = phantom.study_id
    (root / "images" / sid).mkdir(exist_ok=True)
    Image.fromarray(to_uint8(phantom.image), mode="L").save(root / "images" / sid / "0.png")
    masks: dict[str, list[str]] = {}
    if phantom.masks:
        (root / "masks" / sid).mkdir(exist_ok=True)
    for observation, instances in phantom.masks.items():
        for k, mask in enumerate(instances):
            rel = f"{sid}/{mask_slug(observation)}_{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(root / "masks" / rel)
            masks.setdefault(observation, []).append(rel)
    if dicom:
        write_dicom(root / "dicom" / f"{sid}.dcm", phantom, index)
    return {"id": sid, "report": phantom.report, "image_path": [f"{sid}/0.png"], "split": split,
            "labels": phantom.labels, "masks": masks}


def write_dicom(path: str | Path, phantom: Phantom, index: int = 0) -> Path:
    """A valid MONOCHROME2 DX file (12 bits stored) with obviously fake patient data."""
    sid = phantom.study_id
    rows, cols = phantom.image.shape
    sop_uid = generate_uid(entropy_srcs=[sid, "image"])  # deterministic per phantom
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[sid, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[sid, "series"])
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = f"SYNTH-{index + 1:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyID = sid[-16:]
    ds.AccessionNumber = ""
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.StudyDescription = "SYNTHETIC PHANTOM - NOT A PATIENT"
    ds.SeriesDescription = "SynthCXR"
    ds.Manufacturer = "rrg_core SynthCXR"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # image rows run to the patient's left, columns to the feet
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    spacing = f"{DETECTOR_MM / cols:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelData = (np.clip(phantom.image, 0.0, 1.0) * 4095.0 + 0.5).astype("<u2").tobytes()
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def phantoms_or_split(
    folder: str | Path, *, phantoms: int, seed: int, data: str | Path | None = None, split: str = "test"
) -> tuple[list, str]:
    """Held-out studies for tuning or evaluation: ``phantoms`` fresh phantoms of ``seed`` written
    under ``folder`` (when > 0), else the ``split`` of the dataset folder ``data``; with a phrase
    saying which, for model cards and sidecars."""
    from ..datasets import load_split  # rrg_core.datasets reads what this module writes

    if phantoms:
        root = write_dataset(Path(folder) / f"phantoms-{seed}", n=phantoms, seed=seed)
        return load_split(root, "all"), f"{phantoms} fresh SynthCXR phantoms (seed {seed})"
    if data is None:
        raise ValueError("give either a number of phantoms or a dataset folder")
    return load_split(data, split), f"the {split} split of {Path(data).name}"
