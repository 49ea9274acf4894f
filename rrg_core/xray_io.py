"""Read any chest X-ray file (PNG, JPEG, TIFF, BMP, WebP or DICOM) into one display-ready array.

Everything downstream (the model, the heatmaps, the UI) wants the same thing: a float32 image in
[0, 1] with bone bright and air dark. This module does the format-specific work once: DICOM
modality/VOI transforms and MONOCHROME1 inversion, colour and palette to grayscale, first frame of
multi-frame files. Every bad input ends in `UnreadableImage` with one sentence a user can act on.

Decisions worth knowing:
- DICOM is detected by content ("DICM" after the preamble, or a dataset that starts with group
  0002/0008), never by file name; files without file meta get their transfer syntax from the
  encoding pydicom detected.
- After the VOI LUT or window from the file, the result is stretched to [0, 1]; without either,
  the 0.5-99.5 percentile range is used. 16-bit raster images get the same percentile window.
- PALETTE COLOR DICOM is refused: radiographs are never stored that way.
- Transparent raster areas are flattened onto black (air).
- Metadata comes from an allow-list; identifying fields are never read, and warnings raised while
  parsing are silenced because pydicom's value checks can quote them. The study date is reduced
  to its year (a full date identifies a patient under HIPAA Safe Harbor).
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydicom import Dataset, dcmread
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

MAX_PIXELS = 50_000_000
MIN_SIDE = 64
PERCENTILE_WINDOW = (0.5, 99.5)
# warnings.catch_warnings swaps the process-wide filter list: two overlapping reads (Gradio serves
# requests on threads) would restore each other's copies and could leave "ignore" in place for
# good. Reads take turns instead; decoding one X-ray is quick.
_WARNINGS_LOCK = threading.Lock()
_PERCENTILE_NOTE = f"used the {PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]} percentile range as the window"

_SUPPORTED = "PNG, JPEG, TIFF, BMP, WebP or DICOM"
_PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_GRAYSCALE_DICOM = ("MONOCHROME1", "MONOCHROME2")
# YBR_FULL(_422) is converted to RGB by pydicom; YBR_ICT/RCT (JPEG 2000) decode straight to RGB.
_COLOUR_DICOM = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
# Type 2/3 elements that may be present but empty; pydicom's transforms fail on empty values.
_OPTIONAL_TRANSFORMS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTSequence")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's convert("L")

# (is_implicit_VR, is_little_endian) as pydicom detects it -> the native transfer syntax it means.
_NATIVE_SYNTAX = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
# Group 0002 or 0008, little- or big-endian: where files without a preamble begin.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
# The only DICOM fields that leave this module: none of them identifies a patient.
_DICOM_METADATA = {
    "Modality": "modality",
    "ViewPosition": "view_position",
    "BodyPartExamined": "body_part_examined",
    "PhotometricInterpretation": "photometric_interpretation",
}
# First bytes of files people upload by mistake or that Pillow cannot open when damaged.
_SIGNATURES = {
    b"\x89PNG": "PNG",
    b"\xff\xd8": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
    b"RIFF": "WebP",
    b"%PDF": "PDF",
}


class UnreadableImage(ValueError):
    """The file cannot be turned into an X-ray; the message says why and what to do."""


@dataclass
class XRay:
    """A decoded X-ray: `pixels` is float32 H x W in [0, 1], bone bright, air dark."""

    pixels: np.ndarray
    source_format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_xray(source: str | os.PathLike | bytes) -> XRay:
    """Decode a path or the raw bytes of an X-ray file; raise `UnreadableImage` for anything else."""
    data = _read_source(source)
    if not data:
        raise UnreadableImage("The file is empty (0 bytes); upload the X-ray file again.")
    is_dicom = _looks_like_dicom(data)
    try:
        # Silenced because pydicom's value validation warnings can quote identifying fields.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xray = _read_dicom(data) if is_dicom else _read_raster(data)
    except (UnreadableImage, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any decoder failure, Rust panics included (pyo3's PanicException)
        kind = "DICOM" if is_dicom else "image"
        raise UnreadableImage(
            f"The {kind} file is truncated or corrupt and could not be decoded; "
            "export it again from its source and re-upload it."
        ) from exc
    if not np.isfinite(xray.pixels).all():
        raise UnreadableImage(
            "The image holds invalid (NaN or infinite) pixel values; export it again as an "
            "ordinary 8- or 16-bit image."
        )
    if xray.pixels.min() == xray.pixels.max():
        xray.notes.append("the image is uniform (no contrast); check that this is the right file")
    return xray


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit display copy of an `XRay.pixels` array (for PIL, Gradio and matplotlib)."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def _read_source(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "invalid path"
        raise UnreadableImage(
            f"The file could not be opened ({reason}); check the path and that it is readable."
        ) from exc


def _looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 ("DICM" after the preamble), or a bare dataset starting with group 0002/0008."""
    return data[128:132] == b"DICM" or data[:2] in _BARE_DICOM_STARTS


def _check_size(width: int, height: int) -> None:
    """Refuse from the declared size, before any pixel is decoded (decompression bombs)."""
    if width * height > MAX_PIXELS:
        raise UnreadableImage(
            f"The image declares {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), "
            f"over the {MAX_PIXELS // 1_000_000}-megapixel limit; downscale it before uploading."
        )
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(
            f"The image is only {width} x {height} pixels; a chest X-ray needs at least {MIN_SIDE} "
            "pixels on each side, so upload the full-resolution image."
        )


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, PERCENTILE_WINDOW)
    return _stretch(values, lo, hi)


# ---------------------------------------------------------------- raster images (Pillow)


def _read_raster(data: bytes) -> XRay:
    try:
        img = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(
            f"The image declares more than {MAX_PIXELS // 1_000_000} megapixels; "
            "downscale it before uploading."
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage(_describe_unknown(data)) from exc
    _check_size(*img.size)
    source_format = "jpeg" if img.format == "MPO" else img.format.lower()
    metadata = {"width": img.width, "height": img.height}
    notes: list[str] = []
    frames = getattr(img, "n_frames", 1)
    img.load()  # full decode here: a truncated file must fail now, not yield a partial image
    if frames > 1:
        notes.append(f"used frame 1 of {frames}")
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        img = ImageOps.exif_transpose(img)
        notes.append("rotated the image as its EXIF orientation tag says")
    pixels = _raster_pixels(img, notes)
    return XRay(pixels, source_format, metadata, notes)


def _raster_pixels(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Grayscale float pixels from any Pillow mode; appends what was done to `notes`."""
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # resolves the palette and its transparency entry
    alpha = None
    if "A" in img.getbands():
        alpha = np.asarray(img.getchannel("A"), np.float32) / 255
        if alpha.min() < 1:
            notes.append("flattened transparent areas onto black")
    if mode in ("P", "PA"):
        notes.append("converted palette colours to grayscale")
    elif len(set(img.getbands()) - {"A"}) > 1:
        notes.append(f"converted {mode} to grayscale")
    if img.mode in _HIGH_DEPTH_MODES:
        pixels = _percentile_window(np.asarray(img))
        notes.append(f"high-bit-depth image ({mode}): {_PERCENTILE_NOTE}")
    else:
        pixels = np.asarray(img.convert("L"), np.float32) / 255
    return pixels if alpha is None else pixels * alpha


def _describe_unknown(data: bytes) -> str:
    """A specific refusal for bytes that neither Pillow nor the DICOM sniffer recognise."""
    kind = next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)
    if kind == "PDF":
        return f"This is a PDF document, not an image; export the X-ray itself as {_SUPPORTED}."
    if kind is not None:
        return (
            f"This looks like a {kind} file but it is truncated or corrupt; "
            "export it again and re-upload it."
        )
    head = data[:1024]
    text = head.decode("utf-8", errors="replace")
    if b"\0" not in head and sum(c.isprintable() or c.isspace() for c in text) > 0.95 * len(text):
        return f"This is a text file, not an image; upload the X-ray as {_SUPPORTED}."
    return f"This file is not a supported image; upload the X-ray as {_SUPPORTED}."


# ---------------------------------------------------------------- DICOM (pydicom)


def _read_dicom(data: bytes) -> XRay:
    ds = dcmread(io.BytesIO(data), force=True)
    notes: list[str] = []
    if "PixelData" not in ds:
        raise UnreadableImage(
            "This DICOM file contains no image (no Pixel Data); it may be a report, a DICOMDIR or "
            "a truncated file, so export the X-ray image object itself."
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not columns:
        raise UnreadableImage(
            "This DICOM file does not declare its image size (Rows/Columns); it is damaged, "
            "so export it again."
        )
    _check_size(columns, rows)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GRAYSCALE_DICOM + _COLOUR_DICOM:
        raise UnreadableImage(
            f"This DICOM file stores its pixels as {photometric or 'an undeclared colour model'}, "
            "which is not used for radiographs; export it as MONOCHROME2 or RGB."
        )
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != (1 if photometric in _GRAYSCALE_DICOM else 3):
        raise UnreadableImage(
            f"This DICOM file declares {photometric} with {samples} samples per pixel, which "
            "contradict each other; it is damaged, so export it again."
        )
    syntax = _transfer_syntax(ds, notes)
    if not syntax.is_compressed:
        _check_native_length(ds)
    for keyword in _OPTIONAL_TRANSFORMS:
        if keyword in ds and ds[keyword].is_empty:
            del ds[keyword]

    frames = int(ds.get("NumberOfFrames") or 1)
    frame = pixel_array(ds, index=0)
    if frames > 1:
        notes.append(f"used frame 1 of {frames}")
    if photometric in _GRAYSCALE_DICOM:
        pixels = _grayscale_dicom(frame, ds, notes)
        if photometric == "MONOCHROME1":
            pixels = 1 - pixels
            notes.append("inverted MONOCHROME1 so that dense structures are bright")
    else:
        pixels = (frame.astype(np.float64) @ _LUMA / (2 ** int(ds.BitsStored) - 1)).astype(np.float32)
        notes.append(f"converted {photometric} to grayscale")

    metadata: dict[str, Any] = {
        key: str(ds[keyword].value) for keyword, key in _DICOM_METADATA.items() if ds.get(keyword)
    }
    year = str(ds.get("StudyDate") or "")[:4]
    if year.isdigit():
        metadata["study_year"] = year
    metadata |= {"width": columns, "height": rows, "transfer_syntax": syntax.name}
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing:
        metadata["pixel_spacing_mm"] = tuple(float(v) for v in spacing)
    return XRay(pixels, "dicom", metadata, notes)


def _transfer_syntax(ds: Dataset, notes: list[str]) -> UID:
    """The file's transfer syntax; for files without file meta, the native one pydicom detected."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return syntax
    if ds["PixelData"].is_undefined_length:
        raise UnreadableImage(
            "This DICOM file has compressed pixels but no file meta information saying how they "
            "are compressed; export it again as a complete DICOM file."
        )
    syntax = _NATIVE_SYNTAX[ds.original_encoding]
    ds.file_meta.TransferSyntaxUID = syntax
    notes.append(f"the file has no DICOM file meta information; assumed {syntax.name}")
    return syntax


def _check_native_length(ds: Dataset) -> None:
    """Uncompressed pixel data must be exactly as long as declared (plus one byte of padding)."""
    expected = get_expected_length(ds, "bytes")
    actual = len(ds.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise UnreadableImage(
            f"This DICOM file declares {expected} bytes of pixel data but holds {actual}; "
            "it is truncated or damaged, so export it again."
        )


def _grayscale_dicom(frame: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    """Modality LUT, then the file's VOI LUT or window, else a percentile window."""
    values = apply_modality_lut(frame, ds)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    if ds.get("ModalityLUTSequence"):
        notes.append("applied the modality LUT from the file")
    elif (slope, intercept) != (1, 0):
        notes.append(f"applied rescale slope {slope:g} and intercept {intercept:g}")

    voi_note = _voi_note(ds)
    if voi_note:
        voi = apply_voi_lut(values, ds)
        pixels = _stretch(voi, voi.min(), voi.max())
        notes.append(voi_note)
    else:
        pixels = _percentile_window(values)
        notes.append(f"the file has no window: {_PERCENTILE_NOTE}")
    return pixels


def _voi_note(ds: Dataset) -> str | None:
    """What `apply_voi_lut` will do: the VOI LUT wins over a window, as pydicom prefers it."""
    if ds.get("VOILUTSequence"):
        return "applied the VOI LUT from the file"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return f"applied window C={_first(ds.WindowCenter):g} W={_first(ds.WindowWidth):g}"
    return None


def _first(value: Any) -> float:
    """Window Center/Width may hold alternatives; pydicom applies the first."""
    return float(value[0] if isinstance(value, MultiValue) else value)
