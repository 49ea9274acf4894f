"""End to end: `python app.py` serving tiny weights on 127.0.0.1, driven through gradio_client.

The weights ship their index without report texts (as real weights do); the server gets them
from a small dataset folder (--reference-data). The weights and the port come from the
environment (RRG_WEIGHTS, GRADIO_SERVER_PORT), as on Spaces.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from model_fixtures import REPORTS
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from demo import service
from demo.ui import EXAMPLES_DIR
from rrg_core.hub import named_weights
from rrg_core.pipeline import ReportPipeline
from rrg_core.xray_io import read_xray

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-424242"


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    y, x = np.mgrid[:200, :180]
    Image.fromarray((127 + 120 * np.sin(x / 11.0) * np.cos(y / 17.0)).astype(np.uint8)).save(folder / "chest.png")
    _write_dicom(folder / "Doe_Jane.dcm", (4000 * (x / 180) * (y / 200)).astype(np.uint16))
    (folder / "broken.png").write_text("definitely not pixels")
    (folder / "IM0001").write_bytes((folder / "Doe_Jane.dcm").read_bytes())  # DICOM as PACS exports it
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not an X-ray")
    return {p.stem: p for p in folder.iterdir()}


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """A 12-bit MONOCHROME2 DX with a window and patient identifiers that must never surface."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality, ds.ViewPosition = PATIENT_NAME, PATIENT_ID, "DX", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _generate(client: Client, path: Path, beams: int = 2, max_length: int = 16):
    return client.predict(handle_file(str(path)), None, beams, max_length, api_name="/generate")


def test_server_starts_from_the_environment_and_shows_only_the_generate_endpoint(server, client):
    url, _, seconds = server
    print(f"app.py answered after {seconds:.1f} s")
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {"/generate"}
    page = urllib.request.urlopen(url).read().decode()
    assert "Tiny test weights." in page and "Six made-up reports." in page  # the model card
    assert "Research use only" in page


def test_png_gets_the_same_report_findings_and_references_as_the_library(client, inputs, weights, reference_data):
    text, findings, references, txt_path, json_path = _generate(client, inputs["chest"])

    model = ReportPipeline.from_pretrained(weights, texts_from={f"s{i}": REPORTS[i] for i in range(6)})
    expected = model([read_xray(inputs["chest"])], num_beams=2, max_new_tokens=16)[0]
    assert text == expected.text and text
    assert [row[0] for row in findings["data"]] == [f["observation"] for f in expected.findings()]
    assert findings["data"][0][3] == pytest.approx(expected.findings()[0]["p_positive"], abs=1e-3)
    assert [row[1] for row in references["data"]] == [r.study_id for r in expected.references]
    assert [row[2] for row in references["data"]] == pytest.approx([r.distance for r in expected.references], abs=1e-4)
    assert references["data"][0][3] == "★ global prompt"
    assert references["data"][0][5] == REPORTS[int(references["data"][0][1][1:])]  # text from RRG_REFERENCE_DATA

    assert Path(txt_path).read_text().endswith(f"\n\n{text}\n")
    payload = json.loads(Path(json_path).read_text())
    assert payload["report"] == payload["draft"] == text and payload["edited"] is False
    assert payload["weights"] == str(weights) and payload["generated_at"].endswith("+00:00")
    assert [f["observation"] for f in payload["findings"]] == [row[0] for row in findings["data"]]


def test_dicom_is_read_and_no_identifier_reaches_the_outputs_or_the_log(client, server, inputs):
    text, findings, references, _, json_path = _generate(client, inputs["Doe_Jane"])
    assert text and len(findings["data"]) == 14 and len(references["data"]) > 0
    everything = json.dumps([text, findings, references]) + Path(json_path).read_text()
    log = server[1].read_text()
    for identifier in ("Doe", "Jane", PATIENT_ID):
        assert identifier not in everything and identifier not in log


def test_dicom_without_an_extension_is_read_and_other_files_get_a_sentence(client, inputs):
    text, findings, _, _, _ = _generate(client, inputs["IM0001"])
    assert text and len(findings["data"]) == 14
    with pytest.raises(ValidationError, match="frontal: Frontal view: This file is not a supported image"):
        _generate(client, inputs["notes"])


def test_a_lateral_view_is_accepted_and_one_view_weights_ignore_it(client, inputs):
    alone = _generate(client, inputs["chest"])
    with_lateral = client.predict(handle_file(str(inputs["chest"])), handle_file(str(inputs["Doe_Jane"])), 2, 16,
                                  api_name="/generate")
    assert with_lateral[:3] == alone[:3]


def test_bad_file_gets_its_sentence_and_the_server_keeps_serving(client, inputs):
    with pytest.raises(ValidationError, match="frontal: Frontal view: This is a text file, not an image"):
        _generate(client, inputs["broken"])
    with pytest.raises(ValidationError, match="lateral: Lateral view: This is a text file, not an image"):
        client.predict(handle_file(str(inputs["chest"])), handle_file(str(inputs["broken"])), 1, 10, api_name="/generate")
    text, *_ = _generate(client, inputs["chest"], beams=1, max_length=10)
    assert text


def test_every_example_generates(client):
    examples = sorted(EXAMPLES_DIR.iterdir())
    assert any(p.suffix == ".dcm" for p in examples) and any(p.suffix == ".png" for p in examples)
    for path in examples:
        text, findings, *_ = _generate(client, path, beams=1, max_length=10)
        assert text and len(findings["data"]) == 14, path.name


def test_unavailable_hub_weights_stop_the_start_with_one_sentence(capsys):
    import app  # conftest set HF_HUB_OFFLINE=1 before huggingface_hub was imported

    assert app.main(["--weights", "nobody/nothing@v1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("app.py: cannot start: cannot download weights nobody/nothing@v1 from the Hugging Face Hub")
    assert len(err.strip().splitlines()) == 1


def test_the_embedded_default_weights_load_with_no_flags():
    named_weights("synthcxr")  # the embedded default is there (WeightsUnavailable otherwise)
    loaded = service.load()
    assert loaded.weights_id == "embedded default (synthcxr)"
    assert loaded.texts_note is None, "SynthCXR reports are ours to ship, so the default index holds its texts"
    assert loaded.card != "no model card"
    assert loaded.maps_note == service.GROUNDED_MAPS  # the default's maps are mask-supervised


def test_the_page_says_whether_the_maps_are_emergent(weights):
    assert service.load(str(weights)).maps_note == service.EMERGENT_MAPS  # trained without masks


def test_a_full_size_radiograph_gets_capped_heatmaps_and_its_session_keeps_a_few_mb(weights):
    """35 maps at 3,000 x 2,400 would be about a GB per view: the demo asks for them capped, and a
    session keeps only 8-bit display copies and small maps (the films and maps once took 170 MB)."""
    import numpy as np

    from rrg_core.preprocessing import MAX_MAP_SIDE
    from rrg_core.xray_io import XRay

    loaded = service.load(str(weights))
    big = XRay(np.random.default_rng(0).random((3000, 2400), dtype=np.float32), "PNG")
    result = service.generate(loaded, [big], beams=1, max_length=5)
    assert {m.heatmap.shape for m in result.report.attention} == {(MAX_MAP_SIDE, round(2400 * MAX_MAP_SIDE / 3000))}

    kept = service.evidence(result)
    assert {m.heatmap.shape for m in kept.report.attention} == {(service.SESSION_MAP_SIDE, 102)}
    assert all(abs(float(m.heatmap.sum(dtype=np.float64)) - 1) < 1e-2 for m in kept.report.attention)
    assert [d.shape for d in kept.displays] == [(service.DISPLAY_SIDE, 819)] and kept.displays[0].dtype == np.uint8
    held = sum(m.heatmap.nbytes for m in kept.report.attention) + sum(d.nbytes for d in kept.displays)
    assert held < 3 * 2**20
    assert kept.summary == result.report.to_dict()  # the export keeps the full-size maps' figures
