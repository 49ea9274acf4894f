"""SynthCXR: procedural frontal chest radiographs with findings, masks and reports.

The project may not ship patient data, so the embedded default model, the tests and the
demo examples use phantoms it generates itself::

    from rrg_core.phantoms import make_phantom, write_dataset
    p = make_phantom(seed=0, index=7)        # p.image, p.report, p.labels, p.masks
    write_dataset("data/synth", n=5000, seed=0)  # R2Gen layout, readable by rrg_core.datasets

Phantom i of set s is a pure function of (s, i), so loaders can render items on the fly.
Modules: ``anatomy`` (the normal chest), ``findings`` (the 14 observations and their
masks), ``reports`` (the report writer), ``generator`` (one phantom), ``dataset``
(files, DICOM), ``sheet`` (contact sheets), ``__main__`` (the command line).
"""
from __future__ import annotations

from .config import DEFAULT_PREVALENCE, PhantomConfig
from .dataset import phantoms_or_split, write_dataset, write_dicom
from .findings import Finding, random_finding, sample_findings
from .generator import Phantom, make_phantom, render
from .reports import WrittenReport, write_report
from .sheet import contact_sheet

__all__ = [
    "DEFAULT_PREVALENCE",
    "Finding",
    "Phantom",
    "PhantomConfig",
    "WrittenReport",
    "contact_sheet",
    "make_phantom",
    "phantoms_or_split",
    "random_finding",
    "render",
    "sample_findings",
    "write_dataset",
    "write_dicom",
    "write_report",
]
