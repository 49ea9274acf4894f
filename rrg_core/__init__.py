"""rrg_core: REVTAF radiology report generation as a library.

    import rrg_core
    xray = rrg_core.read_xray("chest.dcm")                 # any PNG/JPEG/TIFF/DICOM
    reporter = rrg_core.load_pipeline()                   # embedded default weights ("synthcxr")
    report = reporter([xray])[0]
    print(report.text)

``load_model`` gives the tensor-level :class:`REVTAF` alone (encode, retrieve, diagnose, decode,
the training losses); ``load_pipeline`` wraps it in a :class:`ReportPipeline`, which turns X-rays
into reports with their evidence.

Names are imported lazily, so reading an X-ray or labelling a report does not pay
for importing torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    # observations and states
    "OBSERVATIONS": "observations",
    "PATHOLOGIES": "observations",
    "HEAD": "observations",
    "TAIL": "observations",
    "State": "observations",
    "STATE_TOKENS": "observations",
    # outputs
    "Report": "outputs",
    "Reference": "outputs",
    "AttentionMap": "outputs",
    # reading X-rays
    "read_xray": "xray_io",
    "XRay": "xray_io",
    "UnreadableImage": "xray_io",
    # report text and labels
    "label_report": "labeler",
    "normalize_report": "report_text",
    "split_sentences": "report_text",
    # datasets and metrics
    "Study": "datasets",
    "load_annotation": "datasets",
    "load_split": "datasets",
    "nlg_metrics": "metrics",
    "clinical_efficacy": "metrics",
    "paper_average": "metrics",
    "markdown_table": "metrics",
    # the model
    "REVTAFConfig": "config",
    "REVTAF": "model",
    "load_model": "model",
    "ReportPipeline": "pipeline",
    "load_pipeline": "pipeline",
    "build_index": "indexing",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rrg_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
