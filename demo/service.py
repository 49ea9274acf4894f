"""Thin glue between the page and :mod:`rrg_core`: which weights to load, one request, what a
session keeps of it, and the temporary files a request leaves behind.

Nothing here knows about Gradio, so the same calls serve the UI, the API endpoint and the tests.
Nothing identifying is kept: file names are not recorded, a session keeps only 8-bit display
copies and small heatmaps (:class:`Evidence`, a few MB), and the download files written here are
deleted once they are older than ``OUTBOX_MAX_AGE_S`` (Gradio has copied them into its own cache
by then, which ``delete_cache`` on the page empties) and with the run's folder at exit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from huggingface_hub import ModelCard
from PIL import Image

from rrg_core import checkpoint
from rrg_core.config import REVTAFConfig
from rrg_core.datasets import report_texts
from rrg_core.hub import DEFAULT_NAME, WeightsUnavailable, resolve_weights
from rrg_core.outputs import AttentionMap, Report, strict_json
from rrg_core.xray_io import UnreadableImage, XRay, read_xray, to_uint8

from . import rendering

if TYPE_CHECKING:  # torch and transformers load in the background (Loading), after the page answers
    from rrg_core.pipeline import ReportPipeline

DISCLAIMER = "Research use only — not for diagnosis."
OUTBOX_MAX_AGE_S = 120
CARD_CHARS = 400
DISPLAY_SIDE = 1024  # a session keeps 8-bit copies of the views at most this large
SESSION_MAP_SIDE = 128  # and its heatmaps this large (smooth maps on a 20 x 20 grid: drawn upscaled)
BEAMS = (1, 6)  # the page's and the API's ranges of the decoding options
MAX_LENGTHS = (10, 200)
# CPU threads for torch and faiss on the request path. On a shared 2-core machine under load,
# 2 threads made one report 11-21x slower than 1 (benchmarks/bench_pipeline.py measures both).
REQUEST_THREADS = 1
# What can go wrong while loading weights and reference data; each carries one clear sentence.
STARTUP_ERRORS = (WeightsUnavailable, ValueError, FileNotFoundError)

MISSING_TEXTS = (
    "These weights ship their reference index without report texts (the training reports may not "
    "be redistributed), so references show study ids, label states and distances only. Start the "
    "demo with `--reference-data DIR` (the training dataset folder) to show the texts."
)
# What a map means depends on how the weights were trained (REVTAFConfig.fvtaf.grounding_weight).
GROUNDED_MAPS = (
    "These weights were trained to put each finding's map on the finding itself (annotated masks), "
    "so a finding's map shows where the model locates it."
)
EMERGENT_MAPS = (
    "These maps are emergent attention, trained from labels and report text only: they show where "
    "the model read each prompt, which can be a finding's edge or a neighbouring structure rather "
    "than the finding."
)
GATE_FILE = "gate.json"  # rrg_core.gate.GATE_JSON, not imported: rrg_core.gate loads torch, the page must not wait
NO_GATE = ("These weights have no input gate (no gate.json beside them): nothing checks that an image is a chest "
           "radiograph like the ones they were trained on.")
HEADLINE_METRICS = ("CE micro-F1", "CE macro-F1", "B4", "pointing game")
KNOWN_FAILURES = 2  # bullets of the card's "Known limitations" shown on the page
NO_FRONTAL = "Upload a frontal chest X-ray first (PNG, JPEG or DICOM)."
EXPIRED = "The uploaded file is no longer on the server (uploads are kept only while they are used); upload it again."


@dataclass
class LoadedModel:
    """A ready model with what the page says about it."""

    reporter: ReportPipeline
    weights_id: str
    card: str  # markdown: what the weights are and what they were trained on
    texts_note: str | None  # why reference texts are missing; None when they are shown
    maps_note: str  # what the attention maps of these weights mean
    headline: str  # markdown: how the weights measured on their card, known failures included
    gate_note: str | None  # why nothing checks the input; None when the weights have a gate


@dataclass
class Result:
    """One generated report with the views it was read from (held only during the request)."""

    report: Report
    views: list[XRay]
    weights_id: str
    generated_at: str  # ISO 8601, UTC
    notes: list[str]  # how the uploaded views were used


@dataclass
class Evidence:
    """What a browser session keeps of a result for the page: the report with its heatmaps shrunk
    to ``SESSION_MAP_SIDE`` (float16), 8-bit display copies of the views, and the export summary
    made from the full-size maps. A few MB, where the decoded film and full maps were 170 MB."""

    report: Report
    summary: dict[str, Any]  # Report.to_dict() of the full result
    displays: list[np.ndarray]  # uint8 H x W per view, at most DISPLAY_SIDE
    info: str  # markdown: format, size, safe metadata and the reader's notes per view
    weights_id: str
    generated_at: str
    notes: list[str]


class Loading:
    """Weights located, checked as far as they can be without torch (config, safetensors header,
    the shapes config.json implies, finite values) and described at once, so the page can be
    served; the model itself loaded by :meth:`start` in a background thread; :meth:`result` waits
    for it.

    Locating raises one of STARTUP_ERRORS with a sentence fit for the terminal, and so does
    :meth:`result` for weights that cannot be loaded.
    """

    def __init__(self, weights: str | None = None, reference_data: str | os.PathLike | None = None) -> None:
        self.folder = resolve_weights(weights)
        self.weights_id = _weights_id(weights, self.folder)
        self.card = model_card_summary(self.folder)
        self.config = REVTAFConfig.load(self.folder / "config.json")
        checkpoint.check_weights(self.folder / checkpoint.WEIGHTS_NAME, self.config)  # no torch: refused in a moment
        self.maps_note = GROUNDED_MAPS if self.config.fvtaf.grounding_weight else EMERGENT_MAPS
        self.headline = card_headline(self.folder)
        self.gate_note = None if (self.folder / GATE_FILE).is_file() else NO_GATE
        self._reference_data = reference_data
        self._loaded: Future[LoadedModel] = Future()

    def start(self) -> Loading:
        threading.Thread(target=self._load, name="rrg-load-model", daemon=True).start()
        return self

    def result(self, timeout: float | None = None) -> LoadedModel:
        return self._loaded.result(timeout)

    def _load(self) -> None:
        try:
            self._loaded.set_result(self._load_model())
        except BaseException as err:  # handed to whoever waits in result()
            self._loaded.set_exception(err)

    def _load_model(self) -> LoadedModel:
        from rrg_core.pipeline import ReportPipeline
        from rrg_core.threads import set_threads

        set_threads(REQUEST_THREADS)
        texts = report_texts(self._reference_data) if self._reference_data is not None else None
        reporter = ReportPipeline.from_pretrained(self.folder, texts_from=texts)
        index = reporter.model.index
        has_texts = index is not None and index.texts is not None
        return LoadedModel(reporter=reporter, weights_id=self.weights_id, card=self.card,
                           texts_note=None if has_texts else MISSING_TEXTS, maps_note=self.maps_note,
                           headline=self.headline, gate_note=self.gate_note)


def load(weights: str | None = None, reference_data: str | os.PathLike | None = None) -> LoadedModel:
    """Resolve ``weights`` (None = embedded default, a folder, or ``ORG/REPO[@REVISION]``) and load
    them, attaching report texts from ``reference_data`` (a dataset folder) when given.

    Raises one of STARTUP_ERRORS with a sentence fit for the terminal.
    """
    return Loading(weights, reference_data).start().result()


def _weights_id(spec: str | None, folder: Path) -> str:
    if spec is None:
        return f"embedded default ({DEFAULT_NAME})"
    if Path(spec).is_dir():
        return str(spec)
    return f"{spec} (snapshot {folder.name[:12]})"  # Hub snapshots are named by commit


def model_card_summary(folder: str | os.PathLike) -> str:
    """Markdown from the folder's README.md: its first paragraph and what the weights were trained on
    (a "Training data" section or paragraph, else the front matter's ``datasets``)."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return "no model card"
    card = ModelCard.load(path, ignore_metadata_errors=True)
    paragraphs = [p.strip() for p in card.text.split("\n\n") if p.strip()]
    prose = [p for p in paragraphs if not p.startswith("#") and not _is_training_label(p)]
    parts = [_shorten(prose[0])] if prose else []
    training = _training_data(paragraphs) or ", ".join(map(str, card.data.to_dict().get("datasets") or []))
    if training:
        parts.append(f"**Training data:** {_shorten(training)}")
    return "\n\n".join(parts) or "no model card"


def _is_training_label(text: str) -> bool:
    return text.lstrip("#*_ ").lower().startswith("training data")


def _shorten(text: str) -> str:
    return textwrap.shorten(text, CARD_CHARS, placeholder=" …")  # also joins lines


def _training_data(paragraphs: list[str]) -> str | None:
    """The text after a "Training data" heading, or the paragraph that starts with those words."""
    for i, paragraph in enumerate(paragraphs):
        first, _, rest = paragraph.partition("\n")
        if not _is_training_label(first):
            continue
        if first.startswith("#"):
            return rest.strip() or (paragraphs[i + 1] if i + 1 < len(paragraphs) else None)
        return paragraph.lstrip("#*_ ")[len("training data"):].lstrip("*_:—- ") or None
    return None


def card_headline(folder: str | os.PathLike) -> str:
    """Markdown: what the card's metrics table says the weights were evaluated on and a few of
    their numbers, then the first bullets of its "Known limitations" section."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return "no measured results on the model card"
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = dict(_table_row(line) for line in lines if line.startswith("| ") and line.count("|") == 3)
    numbers = ", ".join(f"{k} {rows[k]}" for k in HEADLINE_METRICS if k in rows)
    parts = [f"**Measured** on {rows['evaluated on']}: {numbers}." if "evaluated on" in rows and numbers else ""]
    failures = _section_bullets(lines, "## Known limitations")[:KNOWN_FAILURES]
    if failures:
        parts.append("**Known failures:** " + " ".join(_shorten(f) for f in failures))
    return "\n\n".join(p for p in parts if p) or "no measured results on the model card"


def _table_row(line: str) -> tuple[str, str]:
    key, value = (cell.strip() for cell in line.strip("| ").split("|", 1))
    return key, value


def _section_bullets(lines: list[str], heading: str) -> list[str]:
    """The bullets (continuation lines joined) of the section that starts with ``heading``."""
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    bullets: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("- "):
            bullets.append(line[2:].strip())
        elif line.strip() and bullets:
            bullets[-1] += " " + line.strip()
    return bullets


def gate_banner(report: Report) -> str | None:
    """The warning above the draft: refused (not a chest radiograph), or out of distribution."""
    check = report.input_check
    if check is None or not check.out_of_distribution:
        return None
    if not check.radiograph:
        return f"⚠️ {check.refusal}"
    return (f"⚠️ This image is unlike the images these weights were trained on ({check.trained_on}): the draft below "
            f"is not meaningful. (Out-of-distribution score {check.ood_score:.2f}, threshold {check.ood_threshold:.2f}.)")


def withheld(report: Report) -> bool:
    """An image that is not a chest radiograph gets no draft, findings or references: anything
    drawn from it would be noise presented as a reading. An out-of-distribution radiograph keeps
    them, under the banner: a reader may still want to see what the weights make of it."""
    return report.input_check is not None and not report.input_check.radiograph


def read_views(frontal: str | None, lateral: str | None, fetch: Callable[[str], bytes | None]) -> list[XRay]:
    """The uploaded views, frontal first: ``frontal`` and ``lateral`` name the uploads (None: not
    given) and ``fetch`` returns their bytes (None: gone). UnreadableImage names the view that failed."""
    if not frontal:
        raise UnreadableImage(NO_FRONTAL)
    return [read_view(fetch(frontal), "Frontal"), *([read_view(fetch(lateral), "Lateral")] if lateral else [])]


def read_view(data: bytes | None, name: str) -> XRay:
    """One uploaded view from its bytes (None: the upload is gone); the refusal starts with ``name``."""
    if data is None:
        raise UnreadableImage(EXPIRED)
    try:
        return read_xray(data)
    except UnreadableImage as err:
        raise UnreadableImage(f"{name} view: {err}") from err


def option_errors(beams: Any, max_length: Any) -> tuple[str | None, str | None]:
    """A sentence for each decoding option outside its range (API clients send anything)."""
    return (_range_error("Beam size", beams, BEAMS), _range_error("Maximum length (tokens)", max_length, MAX_LENGTHS))


def _range_error(name: str, value: Any, bounds: tuple[int, int]) -> str | None:
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value == int(value)
    if whole and bounds[0] <= value <= bounds[1]:
        return None
    return f"{name} must be a whole number from {bounds[0]} to {bounds[1]}; got {value!r}."


def generate(
    loaded: LoadedModel, views: list[XRay], *, beams: int, max_length: int, overrides: dict[str, str] | None = None
) -> Result:
    """Draft a report for one study (1 or 2 views); heatmaps at most MAX_MAP_SIDE large.
    ``overrides`` (observation -> state name) are the reader's changes to the findings, which the
    draft then follows."""
    from rrg_core.preprocessing import MAX_MAP_SIDE  # torch is loaded by now

    n_views = loaded.reporter.config.vision.n_views
    notes = []
    if len(views) > n_views:
        notes.append("These weights read one view: the lateral view was not used.")
    elif len(views) < n_views:
        notes.append("These weights read two views: the frontal view was read for both.")
    report = loaded.reporter(
        [views], num_beams=int(beams), max_new_tokens=int(max_length), max_map_side=MAX_MAP_SIDE,
        states=[overrides]
    )[0]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Result(report, views, loaded.weights_id, stamp, notes)


def evidence(result: Result) -> Evidence:
    """What a session keeps of ``result`` (see :class:`Evidence`)."""
    maps = [dataclasses.replace(m, heatmap=_shrink_map(m.heatmap)) for m in result.report.attention]
    return Evidence(
        report=dataclasses.replace(result.report, attention=maps),
        summary=result.report.to_dict(),
        displays=[display_copy(v.pixels) for v in result.views],
        info=rendering.xray_info(result.views),
        weights_id=result.weights_id,
        generated_at=result.generated_at,
        notes=result.notes,
    )


def _scaled(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """(width, height) of an image of ``shape`` scaled down to at most ``side`` (PIL's order)."""
    scale = min(1.0, side / max(shape))
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


def display_copy(pixels: np.ndarray) -> np.ndarray:
    """An 8-bit copy of an X-ray's pixels, at most DISPLAY_SIDE large (what the page shows)."""
    image = Image.fromarray(to_uint8(pixels))
    return np.asarray(image.resize(_scaled(pixels.shape, DISPLAY_SIDE), Image.Resampling.BILINEAR))


def _shrink_map(heatmap: np.ndarray) -> np.ndarray:
    small = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        _scaled(heatmap.shape, SESSION_MAP_SIDE), Image.Resampling.BILINEAR))
    return (small / max(float(small.sum()), 1e-12)).astype(np.float16)  # still sums to 1


def display_pixels(shown: Evidence, amap: AttentionMap) -> np.ndarray:
    """The display copy (float in [0, 1]) of the view a map belongs to; a one-view study stands in for both."""
    return shown.displays[min(amap.view, len(shown.displays) - 1)].astype(np.float32) / 255


def export_payload(shown: Evidence, text: str) -> dict[str, Any]:
    """The .json download: the (possibly edited) report, the draft, findings, references, provenance."""
    hidden = {"report": "", "findings": [], "references": []} if withheld(shown.report) else {}
    return {
        **shown.summary,
        "report": text,
        "draft": "" if hidden else shown.report.text,
        **hidden,
        "edited": text != shown.report.text,
        "weights": shown.weights_id,
        "generated_at": shown.generated_at,
        "notice": DISCLAIMER,
    }


class Outbox:
    """A private folder for download files (in the run's folder, see demo.storage), pruned by age."""

    def __init__(self, root: Path, max_age_s: float = OUTBOX_MAX_AGE_S) -> None:
        self.root = Path(root)
        self.max_age_s = max_age_s

    def export(self, result: Evidence, text: str) -> tuple[Path, Path]:
        """Write the .txt and .json downloads of one report; returns their paths."""
        self.prune()
        folder = Path(tempfile.mkdtemp(dir=self.root))
        stem = "rrg-report-" + result.generated_at.replace(":", "").replace("+0000", "Z")
        txt, js = folder / f"{stem}.txt", folder / f"{stem}.json"
        txt.write_text(f"{DISCLAIMER} Weights: {result.weights_id}. Generated {result.generated_at}.\n\n{text}\n", "utf-8")
        js.write_text(json.dumps(strict_json(export_payload(result, text)), indent=2, ensure_ascii=False, allow_nan=False),
                      "utf-8")
        return txt, js

    def prune(self) -> None:
        """Delete request folders older than ``max_age_s``."""
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            try:
                expired = folder.stat().st_mtime < cutoff
            except FileNotFoundError:  # pruned by a concurrent request
                continue
            if expired:
                shutil.rmtree(folder, ignore_errors=True)


class Pace:
    """Mean seconds per generation (an exponential average): how long a refused client should wait."""

    def __init__(self, first_guess_s: float = 5.0, weight: float = 0.2) -> None:
        self.seconds, self.weight = first_guess_s, weight
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self.seconds += self.weight * (seconds - self.seconds)
