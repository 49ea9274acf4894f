"""rrg_core.read_xray: every format and refusal, built in the test from one synthetic chest-like image.

Each decoded image is compared with the source by Pearson correlation, so a wrong polarity, a wrong
frame, a transposition or a mangled window fails, not only an exception.
"""
from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import ExifTags, Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from rrg_core.xray_io import UnreadableImage, XRay, read_xray, to_uint8

HEIGHT, WIDTH = 160, 128  # not square, so a transposed or unrotated result fails on shape
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-913746",
    "PatientBirthDate": "19430512",
    "InstitutionName": "Saint Nowhere Hospital",
    "AccessionNumber": "ACC-77812",
    "ReferringPhysicianName": "House^Gregory",
}


def _chest() -> np.ndarray:
    """Float image in [0, 1]: body silhouette, dark lungs with rib arcs, bright spine, a gradient."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]
    body = np.exp(-(((x - 0.5) / 0.45) ** 6 + ((y - 0.55) / 0.5) ** 6))
    lungs = sum(np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.5) / 0.25) ** 2)) for cx in (0.3, 0.7))
    ribs = 0.15 * (np.sin(40 * y + 8 * (x - 0.5) ** 2) > 0.6) * lungs
    spine = 0.3 * np.exp(-(((x - 0.5) / 0.05) ** 2)) * (y > 0.1)
    img = 0.5 * body - 0.4 * lungs + ribs + spine + 0.15 * y
    return (img - img.min()) / (img.max() - img.min())


SOURCE = _chest()
U8 = np.round(SOURCE * 255).astype(np.uint8)
U12 = np.round(SOURCE * 4095).astype(np.uint16)
TINTED = np.stack([U8, (U8 * 0.9).astype(np.uint8), (U8 * 0.8).astype(np.uint8)], axis=-1)


def _check_contract(xray: XRay) -> None:
    pixels = xray.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


def _corr(xray: XRay, source: np.ndarray = SOURCE) -> float:
    """Pearson correlation with the source, after checking the pixel contract."""
    _check_contract(xray)
    assert xray.pixels.shape == source.shape
    return float(np.corrcoef(xray.pixels.ravel(), source.ravel())[0, 1])


def _has_note(xray: XRay, text: str) -> bool:
    return any(text in note for note in xray.notes)


# ---------------------------------------------------------------- raster images


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _palette() -> Image.Image:
    img = Image.frombytes("P", (WIDTH, HEIGHT), U8.tobytes())
    img.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes())
    return img


RASTER_CASES: dict[str, tuple[Callable[[], bytes], str, float, str | None]] = {
    # name: (encoder, source_format, minimum correlation, expected note)
    "png-L": (lambda: _save(Image.fromarray(U8), "PNG"), "png", 0.99, None),
    "png-16bit": (lambda: _save(Image.fromarray(U12 * 16), "PNG"), "png", 0.99, "high-bit-depth"),
    "png-palette": (lambda: _save(_palette(), "PNG"), "png", 0.99, "palette"),
    "png-RGBA": (lambda: _save(Image.fromarray(TINTED).convert("RGBA"), "PNG"), "png", 0.99, "RGBA"),
    "png-LA": (lambda: _save(Image.fromarray(U8).convert("LA"), "PNG"), "png", 0.99, None),
    "jpeg-L": (lambda: _save(Image.fromarray(U8), "JPEG", quality=85), "jpeg", 0.95, None),
    "jpeg-RGB": (lambda: _save(Image.fromarray(TINTED), "JPEG", quality=85), "jpeg", 0.95, "RGB to gray"),
    "tiff-L": (lambda: _save(Image.fromarray(U8), "TIFF", compression="tiff_lzw"), "tiff", 0.99, None),
    "tiff-16bit": (lambda: _save(Image.fromarray(U12), "TIFF"), "tiff", 0.99, "high-bit-depth"),
    "tiff-float": (lambda: _save(Image.fromarray(SOURCE.astype(np.float32)), "TIFF"), "tiff", 0.99, "(F)"),
    "bmp-RGB": (lambda: _save(Image.fromarray(TINTED), "BMP"), "bmp", 0.99, "RGB to grayscale"),
    "webp-lossless": (lambda: _save(Image.fromarray(TINTED), "WEBP", lossless=True), "webp", 0.99, None),
    "webp-lossy": (lambda: _save(Image.fromarray(TINTED), "WEBP", quality=80), "webp", 0.95, None),
}


@pytest.mark.parametrize("name", RASTER_CASES)
def test_raster_formats_match_source(name: str) -> None:
    encode, source_format, min_corr, note = RASTER_CASES[name]
    xray = read_xray(encode())
    assert xray.source_format == source_format
    assert _corr(xray) > min_corr
    assert xray.metadata == {"width": WIDTH, "height": HEIGHT}
    if note:
        assert _has_note(xray, note), xray.notes


def test_8bit_png_keeps_its_grey_levels() -> None:
    """Display-ready 8-bit images are not re-windowed: value v comes back as v / 255."""
    xray = read_xray(_save(Image.fromarray(U8), "PNG"))
    np.testing.assert_allclose(xray.pixels, U8 / 255, atol=1e-6)
    assert xray.notes == []


def test_transparency_is_flattened_onto_black() -> None:
    alpha = np.full_like(U8, 255)
    alpha[:, :20] = 0
    img = Image.fromarray(np.stack([U8, alpha], axis=-1), "LA")
    xray = read_xray(_save(img, "PNG"))
    assert np.all(xray.pixels[:, :20] == 0)
    np.testing.assert_allclose(xray.pixels[:, 20:], U8[:, 20:] / 255, atol=1e-6)
    assert _has_note(xray, "transparent")


def test_multiframe_tiff_uses_first_frame() -> None:
    first, second = Image.fromarray(U8), Image.fromarray(255 - U8)
    xray = read_xray(_save(first, "TIFF", save_all=True, append_images=[second]))
    assert _corr(xray) > 0.99
    assert _has_note(xray, "used frame 1 of 2")


def test_exif_orientation_is_applied() -> None:
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(U8, k=1)))  # shown rotated back by tag 6
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    xray = read_xray(_save(stored, "JPEG", quality=90, exif=exif))
    assert _corr(xray) > 0.95 and _has_note(xray, "EXIF orientation")


def test_uniform_image_is_accepted_with_a_note() -> None:
    xray = read_xray(_save(Image.new("L", (WIDTH, HEIGHT), 128), "PNG"))
    np.testing.assert_allclose(xray.pixels, 128 / 255, atol=1e-6)
    assert _has_note(xray, "uniform")


# ---------------------------------------------------------------- DICOM


def _dataset(
    arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements
) -> Dataset:
    """A CR dataset with identifying fields filled in, so every DICOM test can check they stay out."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = "20240131"
    ds.PixelSpacing = [0.139, 0.143]
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _compressed(syntax: str, arr: np.ndarray = U12, bits: int = 12, **kwargs) -> bytes:
    ds = _dataset(arr, bits_stored=bits)
    ds.compress(syntax, **kwargs)
    return _part10(ds)


def _jpeg_baseline(img: Image.Image, photometric: str) -> bytes:
    """Pillow writes the JPEG codestream; pydicom only wraps it."""
    ds = _dataset(np.asarray(img), photometric)
    ds.PixelData = encapsulate([_save(img, "JPEG", quality=90)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return _part10(ds)


def _voi_lut_dataset() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 65535).astype("<u2")
    item.add_new("LUTData", "OW", lut.tobytes())
    return _dataset(U12, bits_stored=12, VOILUTSequence=[item])


def _without_meta(implicit_vr: bool, little_endian: bool = True) -> bytes:
    # Big endian with 8-bit pixels: pydicom writes the pixel bytes as they are, without swapping.
    ds = _dataset(U12 if little_endian else U8, bits_stored=12 if little_endian else 8)
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=implicit_vr, little_endian=little_endian)
    return buf.getvalue()


SIGNED = (U12.astype(np.int16) - 2048)  # stored values; rescale maps them to U12 / 2 - 1000
DICOM_CASES: dict[str, tuple[Callable[[], bytes], float, str]] = {
    # name: (encoder, minimum correlation, expected note)
    "uint8": (lambda: _part10(_dataset(U8)), 0.99, "no window"),
    "uint16-12bit": (lambda: _part10(_dataset(U12, bits_stored=12)), 0.99, "no window"),
    "signed-rescale": (
        lambda: _part10(_dataset(SIGNED, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=24)),
        0.99,
        "rescale slope 0.5 and intercept 24",
    ),
    "window": (
        lambda: _part10(_dataset(U12, bits_stored=12, WindowCenter=2048, WindowWidth=4096)),
        0.99,
        "window C=2048 W=4096",
    ),
    "empty-window": (
        lambda: _part10(
            _dataset(U12, bits_stored=12, WindowCenter=None, WindowWidth=None, RescaleSlope=None)
        ),
        0.99,
        "no window",
    ),
    "voi-lut": (lambda: _part10(_voi_lut_dataset()), 0.95, "VOI LUT"),
    "monochrome1": (lambda: _part10(_dataset(4095 - U12, "MONOCHROME1", 12)), 0.99, "inverted MONOCHROME1"),
    "multiframe": (
        lambda: _part10(_dataset(np.stack([U12, 4095 - U12, 4095 - U12]), bits_stored=12)),
        0.99,
        "used frame 1 of 3",
    ),
    "rgb": (lambda: _part10(_dataset(TINTED, "RGB")), 0.99, "converted RGB to grayscale"),
    "rle": (lambda: _compressed(RLELossless), 0.99, "no window"),
    "jpeg-ls-lossless": (lambda: _compressed(JPEGLSLossless), 0.99, "no window"),
    "jpeg-ls-near-lossless": (lambda: _compressed(JPEGLSNearLossless, jls_error=3), 0.95, "no window"),
    "jpeg2000-lossless": (lambda: _compressed(JPEG2000Lossless), 0.99, "no window"),
    "jpeg2000-lossy": (lambda: _compressed(JPEG2000, j2k_cr=[20]), 0.95, "no window"),
    "jpeg-baseline-gray": (lambda: _jpeg_baseline(Image.fromarray(U8), "MONOCHROME2"), 0.95, "no window"),
    "jpeg-baseline-ybr": (
        lambda: _jpeg_baseline(Image.fromarray(TINTED), "YBR_FULL_422"),
        0.95,
        "converted YBR_FULL_422 to grayscale",
    ),
    "no-preamble": (lambda: _part10(_dataset(U12, bits_stored=12))[132:], 0.99, "no window"),
    "no-meta-implicit": (lambda: _without_meta(implicit_vr=True), 0.99, "assumed Implicit VR Little Endian"),
    "no-meta-explicit": (lambda: _without_meta(implicit_vr=False), 0.99, "assumed Explicit VR Little Endian"),
    "no-meta-big-endian": (
        lambda: _without_meta(implicit_vr=False, little_endian=False),
        0.99,
        "assumed Explicit VR Big Endian",
    ),
}


@pytest.mark.parametrize("name", DICOM_CASES)
def test_dicom_variants_match_source(name: str) -> None:
    encode, min_corr, note = DICOM_CASES[name]
    xray = read_xray(encode())
    assert xray.source_format == "dicom"
    assert _corr(xray) > min_corr
    assert _has_note(xray, note), xray.notes
    text = repr(xray.metadata) + repr(xray.notes)
    assert not [value for value in IDENTIFYING.values() if value.split("^")[0] in text]


def test_dicom_metadata_is_the_allow_list() -> None:
    xray = read_xray(_compressed(JPEG2000Lossless))
    assert xray.metadata == {
        "modality": "CR",
        "view_position": "PA",
        "body_part_examined": "CHEST",
        "photometric_interpretation": "MONOCHROME2",
        "study_year": "2024",  # the year only: a full date identifies a patient
        "width": WIDTH,
        "height": HEIGHT,
        "transfer_syntax": "JPEG 2000 Image Compression (Lossless Only)",
        "pixel_spacing_mm": (0.139, 0.143),
    }


def test_dicom_window_clips_outside_values() -> None:
    """C=1024 W=1024 (LINEAR): values below 512 are black, above 1536 white, linear between."""
    xray = read_xray(_part10(_dataset(U12, bits_stored=12, WindowCenter=1024, WindowWidth=1024)))
    expected = np.clip((U12 - 1023.5) / 1023 + 0.5, 0, 1)
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-4)


def test_dicom_voi_lut_is_applied() -> None:
    xray = read_xray(_part10(_voi_lut_dataset()))
    np.testing.assert_allclose(xray.pixels, np.sqrt(U12 / 4095), atol=1e-3)


def test_path_and_bytes_give_the_same_image(tmp_path: Path) -> None:
    """Detection is by content: a DICOM named .png and a PNG named .dcm still read correctly."""
    dicom, png = tmp_path / "scan.png", tmp_path / "scan.dcm"
    dicom.write_bytes(_part10(_dataset(U12, bits_stored=12)))
    png.write_bytes(_save(Image.fromarray(U8), "PNG"))
    for path in (dicom, png):
        from_path, from_str = read_xray(path), read_xray(str(path))
        from_bytes = read_xray(path.read_bytes())
        assert from_path.source_format == ("dicom" if path is dicom else "png")
        np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
        np.testing.assert_array_equal(from_str.pixels, from_bytes.pixels)


def test_to_uint8() -> None:
    out = to_uint8(np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 128, 255, 255]]


# ---------------------------------------------------------------- refusals


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in its header but holds almost nothing (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _corrupt_png() -> bytes:
    data = bytearray(_save(Image.fromarray(U8), "PNG"))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    return bytes(data)


def _float_tiff_with_nan() -> bytes:
    values = SOURCE.astype(np.float32)
    values[10, 10] = np.nan
    return _save(Image.fromarray(values), "TIFF")


def _no_pixel_data() -> bytes:
    ds = _dataset(U8)
    del ds.PixelData
    return _part10(ds)


def _size_mismatch() -> bytes:
    ds = _dataset(U12, bits_stored=12)
    ds.Rows = HEIGHT + 40
    return _part10(ds)


def _dicom_bomb() -> bytes:
    ds = _dataset(U8)
    ds.Rows, ds.Columns = 10_000, 10_000
    return _part10(ds)


REFUSALS: dict[str, tuple[Callable[[], bytes], str]] = {
    # name: (encoder, words the message must contain)
    "empty": (lambda: b"", "empty"),
    "text": (lambda: b"Findings: the lungs are clear.\nImpression: normal chest.\n", "text file"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF document"),
    "random-binary": (lambda: np.random.default_rng(0).bytes(4096), "not a supported image"),
    "gif": (lambda: _save(Image.fromarray(U8), "GIF"), "not a supported image"),
    "truncated-png": (lambda: _save(Image.fromarray(U8), "PNG")[:2000], "truncated or corrupt"),
    "truncated-jpeg": (lambda: _save(Image.fromarray(U8), "JPEG")[:1500], "truncated or corrupt"),
    "header-only-png": (lambda: _save(Image.fromarray(U8), "PNG")[:40], "truncated or corrupt"),
    "corrupt-png": (_corrupt_png, "truncated or corrupt"),
    "tiny-png": (lambda: _save(Image.fromarray(U8[:32, :40]), "PNG"), "at least 64 pixels"),
    "bomb-png": (lambda: _png_header_only(10_000, 10_000), "50-megapixel limit"),
    "float-tiff-nan": (_float_tiff_with_nan, "NaN"),
    "dicom-no-pixels": (_no_pixel_data, "no image"),
    "dicom-truncated": (
        lambda: _part10(_dataset(U12, bits_stored=12))[:-5000],
        "declares 40960 bytes of pixel data but holds 35960",
    ),
    "dicom-size-mismatch": (_size_mismatch, "declares 51200 bytes of pixel data but holds 40960"),
    "dicom-bomb": (_dicom_bomb, "50-megapixel limit"),
    "dicom-tiny": (lambda: _part10(_dataset(U8[:40, :40])), "at least 64 pixels"),
    "dicom-samples-mismatch": (
        lambda: _part10(_dataset(TINTED, "RGB", PhotometricInterpretation="MONOCHROME2")),
        "contradict each other",
    ),
    "dicom-palette": (lambda: _part10(_dataset(U8, "PALETTE COLOR")), "PALETTE COLOR"),
    "dicom-garbage": (lambda: b"\x08\x00\x05\x00" + np.random.default_rng(1).bytes(2000), "corrupt"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_say_what_is_wrong(name: str) -> None:
    encode, words = REFUSALS[name]
    with pytest.raises(UnreadableImage, match=words) as info:
        read_xray(encode())
    assert str(info.value).count(";") == 1  # what is wrong; what to do


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="No such file"):
        read_xray(tmp_path / "absent.dcm")


# ---------------------------------------------------------------- robustness


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Cut short, bytes overwritten anywhere, or a header scrambled."""
    out = []
    for i in range(count):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: rng.integers(len(b))]
        elif i % 3 == 1:
            for _ in range(rng.integers(1, 10)):
                b[rng.integers(len(b))] = rng.integers(256)
        else:
            start = rng.integers(min(len(b), 400))
            b[start : start + 4] = rng.bytes(4)
        out.append(bytes(b))
    return out


def test_damaged_files_never_raise_anything_else() -> None:
    """Fuzzing found a Rust panic (a BaseException) in the RLE decoder: it must become UnreadableImage."""
    rng = np.random.default_rng(0)
    sources = [
        _save(Image.fromarray(U8), "PNG"),
        _save(Image.fromarray(TINTED), "JPEG"),
        _part10(_dataset(U12, bits_stored=12)),
        _compressed(RLELossless),
        _compressed(JPEG2000Lossless),
    ]
    for data in sources:
        for damaged in _mutations(data, rng, 60):
            with contextlib.suppress(UnreadableImage):
                _check_contract(read_xray(damaged))


PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def test_pydicom_sample_files() -> None:
    """pydicom's bundled files come from real writers (dcmtk, GDCM, scanners) and include broken ones."""
    files = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"pydicom's sample files are not installed under {PYDICOM_FILES}")
    read: dict[str, XRay] = {}
    refused: dict[str, str] = {}
    for path in files:
        try:
            read[path.name] = xray = read_xray(path)
            _check_contract(xray)
        except UnreadableImage as exc:
            refused[path.name] = str(exc)
    reference = read["MR_small.dcm"].pixels  # one image in six encodings written by other tools
    for name in ("MR_small_bigendian", "MR_small_expb", "MR_small_implicit", "MR_small_RLE",
                 "MR_small_jp2klossless", "MR_small_jpeg_ls_lossless"):
        np.testing.assert_allclose(read[f"{name}.dcm"].pixels, reference, atol=1e-6, err_msg=name)
    assert _has_note(read["CT_small.dcm"], "rescale slope 1 and intercept -1024")
    assert _has_note(read["examples_ybr_color.dcm"], "used frame 1 of 30")
    assert "truncated" in refused["MR_truncated.dcm"]
    assert "no image" in refused["test-SR.dcm"]
    assert "PALETTE COLOR" in refused["examples_palette.dcm"]


IU_XRAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray"


@pytest.mark.real_data
def test_iu_xray_pngs_read_unchanged() -> None:
    """The training images are 8-bit grayscale PNGs: they must come back exactly, with no notes."""
    paths = sorted((IU_XRAY / "images").glob("*/*.png"))[:20]
    if not paths:
        pytest.skip(f"IU X-Ray images not found under {IU_XRAY / 'images'}")
    for path in paths:
        xray = read_xray(path)
        with Image.open(path) as img:
            expected = np.asarray(img.convert("L"), np.float32) / 255
        np.testing.assert_array_equal(xray.pixels, expected)
        assert xray.source_format == "png" and xray.notes == []


def test_concurrent_reads_leave_the_warning_filters_as_they_were(monkeypatch) -> None:
    """Overlapping reads (the demo serves requests on threads) must not leave the process-wide
    warning filters silenced: each read silences them only while it decodes."""
    import threading
    import time
    import warnings

    from rrg_core import xray_io

    original = xray_io._read_raster

    def slow_read(data: bytes) -> XRay:  # widen the window in which two reads overlap
        time.sleep(0.2)
        return original(data)

    monkeypatch.setattr(xray_io, "_read_raster", slow_read)
    png = _save(Image.fromarray(to_uint8(SOURCE)), "PNG")
    before = list(warnings.filters)
    threads = [threading.Thread(target=read_xray, args=(png,)) for _ in range(2)]
    for i, thread in enumerate(threads):
        thread.start()
        time.sleep(0.05 * (i + 1))
    for thread in threads:
        thread.join()
    assert warnings.filters == before
