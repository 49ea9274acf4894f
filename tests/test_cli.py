"""The command line, rrg (python -m rrg_core): report FILE... (tiny model weights saved to a folder), label,
and the phantoms and demo commands it hands on."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_model
from PIL import Image

from rrg_core.__main__ import main
from rrg_core.labeler import label_report
from rrg_core.observations import OBSERVATIONS
from rrg_core.pipeline import ReportPipeline
from rrg_core.preprocessing import MAX_MAP_SIDE
from rrg_core.xray_io import read_xray

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    tiny_model()[0].save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("xrays")
    y, x = np.mgrid[:160, :140]
    Image.fromarray((127 + 120 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint8)).save(folder / "chest.png")
    Image.fromarray((255 * (x > 70)).astype(np.uint8)).save(folder / "second.jpg")
    (folder / "notes.png").write_text("this is a text file with a .png name")
    return {p.stem: p for p in folder.iterdir()}


def _read_error(path: Path) -> str:
    try:
        read_xray(path)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"{path} should be unreadable")


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_json_has_one_record_per_file_and_a_bad_file_does_not_stop_the_rest(weights, files, capsys):
    paths = [str(files["chest"]), str(files["notes"]), str(files["second"])]
    assert main(["report", *paths, "--weights", str(weights), "--json", "--beams", "2", "--max-length", "12"]) == 0
    records = _records(capsys)
    assert [r["file"] for r in records] == paths
    gate_fields = ["out_of_distribution", "ood_score", "ood_threshold", "radiograph", "refusal", "trained_on"]
    keys = ["file", "report", "findings", "references", "overrides", "consistency"]
    assert list(records[1]) == [*keys, "error"]
    assert all(list(r) == [*keys, *gate_fields, "error"] for r in records[::2])

    bad = records[1]
    assert bad["error"].startswith("This is a text file, not an image")
    assert (bad["report"], bad["findings"], bad["references"]) == (None, [], [])

    # The same numbers as the library gives for the same file and options.
    model = ReportPipeline.from_pretrained(weights)
    expected = model([read_xray(files["chest"])], num_beams=2, max_new_tokens=12)[0].to_dict()
    good = records[0]
    assert good["error"] is None
    assert good["report"] == expected["report"] and good["report"]
    assert [f["observation"] for f in good["findings"]] == [f["observation"] for f in expected["findings"]]
    assert sorted(f["observation"] for f in good["findings"]) == sorted(OBSERVATIONS)
    assert [r["study_id"] for r in good["references"]] == [r["study_id"] for r in expected["references"]]
    assert good["references"][0]["is_global_prompt"] and good["references"][0]["text"]
    distances = [r["distance"] for r in good["references"]]
    assert distances == sorted(distances) and len(distances) == model.config.retrieval.top_k


def test_a_state_override_reaches_the_text_and_is_marked_as_the_readers(weights, files, capsys):
    argv = ["report", str(files["chest"]), "--weights", str(weights), "--json", "--max-length", "12"]
    assert main([*argv, "--state", "pleural effusion=positive", "--state", "Cardiomegaly=negative"]) == 0
    record = _records(capsys)[0]
    assert record["overrides"] == {"Pleural Effusion": "positive", "Cardiomegaly": "negative"}
    findings = {f["observation"]: f for f in record["findings"]}
    assert findings["Pleural Effusion"]["state"] == "positive" and findings["Pleural Effusion"]["set_by"] == "reader"
    assert findings["Cardiomegaly"]["set_by"] == "reader" and findings["Edema"]["set_by"] == "model"
    labels = label_report(record["report"])
    assert labels["Pleural Effusion"] == 1 and labels["Cardiomegaly"] != 1
def test_no_maps_gives_the_same_report_and_map_sides(weights, files, capsys):
    args = ["report", str(files["chest"]), "--weights", str(weights), "--json", "--max-length", "8"]
    assert main(args) == 0 and main([*args, "--no-maps"]) == 0
    with_maps, without = _records(capsys)
    assert without["report"] == with_maps["report"]
    assert [f["p_positive"] for f in without["findings"]] == [f["p_positive"] for f in with_maps["findings"]]
    # The sides come from the maps at the model's own resolution, so the text does not change.
    assert [f["map_right_share"] for f in without["findings"]] == [f["map_right_share"] for f in with_maps["findings"]]


def test_heatmaps_are_capped_as_in_the_demo(weights, tmp_path, monkeypatch, capsys):
    """A full-size film's 35 maps at its own resolution took 3 GB; the CLI asks for them capped."""
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 1800), dtype=np.uint8)).save(big)
    model = ReportPipeline.from_pretrained(weights)
    shapes = []
    def spy(*args, **kwargs):
        reports = model(*args, **kwargs)
        shapes.extend(m.heatmap.shape for m in reports[0].attention)
        return reports

    monkeypatch.setattr("rrg_core.pipeline.load_pipeline", lambda *args, **kwargs: spy)
    assert main(["report", str(big), "--json", "--max-length", "4"]) == 0
    assert set(shapes) == {(MAX_MAP_SIDE, MAX_MAP_SIDE * 3 // 4)}
    assert _records(capsys)[0]["error"] is None


def test_json_is_strict_null_for_non_finite_numbers(weights, files, monkeypatch, capsys):
    model = ReportPipeline.from_pretrained(weights)
    def broken(*args, **kwargs):
        reports = model(*args, **kwargs)
        reports[0].references[0].distance = float("nan")
        reports[0].probabilities["Edema"] = [float("inf")] * 4
        return reports

    monkeypatch.setattr("rrg_core.pipeline.load_pipeline", lambda *args, **kwargs: broken)
    assert main(["report", str(files["chest"]), "--json", "--max-length", "4"]) == 0
    line = capsys.readouterr().out.strip()
    record = json.loads(line, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    assert record["references"][0]["distance"] is None
    assert next(f for f in record["findings"] if f["observation"] == "Edema")["p_positive"] is None


def test_text_form_is_readable(weights, files, capsys):
    assert main(["report", str(files["chest"]), str(files["notes"]), "--weights", str(weights), "--max-length", "8"]) == 0
    out = capsys.readouterr().out
    chest, notes = out.split("\n\n")[:2]
    lines = chest.splitlines()
    assert lines[0] == str(files["chest"])
    assert lines[1].startswith("  report: ") and lines[2].startswith("  findings: ")
    assert "global prompt" in lines[3]
    assert notes.splitlines() == [str(files["notes"]), "  error: " + _read_error(files["notes"])]


def test_text_form_gives_the_side_of_each_flagged_findings_map():
    from rrg_core.__main__ import format_text

    finding = {"observation": "Pleural Effusion", "state": "positive", "p_positive": 0.9, "map_right_share": 0.1}
    record = {"file": "x.png", "error": None, "report": "small left pleural effusion .", "references": [],
              "findings": [finding, {**finding, "observation": "Edema", "state": "uncertain", "map_right_share": None}]}
    assert format_text(record).splitlines()[2] == (
        "  findings: Pleural Effusion positive (P(positive) 0.90, map 90 % on the patient's left); "
        "Edema uncertain (P(positive) 0.90)"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report"], "the following arguments are required: FILE"),
        (["report", "x.png", "--beams", "0"], "must be at least 1"),
        (["summarise", "x.png"], "invalid choice"),
        (["report", "x.png", "--weights", "/nonexistent/weights"], "weights folder /nonexistent/weights does not exist"),
        (["report", "x.png", "--weights", "nobody/nothing@v1"], "cannot download weights nobody/nothing@v1"),  # offline
        (["report", "x.png", "--state", "Heart=positive"], "unknown observation 'Heart'"),
        (["report", "x.png", "--state", "Cardiomegaly=likely"], "unknown state 'likely' for Cardiomegaly"),
        (["report", "x.png", "--state", "Cardiomegaly"], "expected OBSERVATION=STATE"),
        (["report", "x.png", "--state", "No Finding=negative"], "No Finding follows the other findings"),
    ],
)
def test_usage_errors_exit_with_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point(weights, files):
    run = subprocess.run([sys.executable, "-m", "rrg_core", "report", str(files["notes"]), str(files["chest"]),
                          "--weights", str(weights), "--json", "--max-length", "6"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["error"] is None for line in run.stdout.splitlines()] == [False, True]


def test_label_command_writes_chexpert_csv(tmp_path, capsys):
    import csv as csv_module
    import io

    source = tmp_path / "reports.json"
    source.write_text(json.dumps({"test": [
        {"id": "a", "report": "Small left pleural effusion. No pneumothorax."},
        {"id": "b", "report": "The heart is normal in size. The lungs are clear."},
    ]}))
    assert main(["label", str(source)]) == 0
    rows = list(csv_module.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["Pleural Effusion"] == "1" and rows[0]["Pneumothorax"] == "0" and rows[0]["Edema"] == ""
    assert rows[1]["No Finding"] == "1" and rows[1]["Cardiomegaly"] == "0"

    table = tmp_path / "reports.csv"
    table.write_text("study,text\nx,Mild cardiomegaly.\n")
    assert main(["label", str(table), "--column", "text", "--id-column", "study"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("x,,1,")
    with pytest.raises(SystemExit):
        main(["label", str(table)])  # no "report" column


def _rrg():
    """The function that pip's ``rrg`` script calls, as pyproject.toml names it."""
    tomllib = pytest.importorskip("tomllib")
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["rrg"]
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_rrg_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _rrg()(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rrg ")
    for command in ("report", "label", "review-export", "phantoms", "demo"):
        assert f"\n    {command} " in out, command


def test_rrg_label_gives_the_labelers_states(tmp_path, capsys):
    text = "Mild cardiomegaly. Small right pleural effusion. No pneumothorax."
    (tmp_path / "reports.csv").write_text(f"id,report\ns1,{text}\n")
    assert _rrg()(["label", str(tmp_path / "reports.csv")]) == 0
    header, row = capsys.readouterr().out.splitlines()
    labels = label_report(text)
    assert header == ",".join(["id", *OBSERVATIONS])
    assert row == ",".join(["s1", *("" if labels[o] is None else str(labels[o]) for o in OBSERVATIONS)])
    assert (labels["Cardiomegaly"], labels["Pleural Effusion"], labels["Pneumothorax"]) == (1, 1, 0)


def test_rrg_phantoms_takes_the_generators_own_options(tmp_path, capsys):
    assert _rrg()(["phantoms", "--out", str(tmp_path / "synth"), "--n", "2", "--size", "64"]) == 0
    annotation = json.loads((tmp_path / "synth" / "annotation.json").read_text())
    assert sum(len(entries) for entries in annotation.values()) == 2
    with pytest.raises(SystemExit) as exit_info:
        _rrg()(["phantoms", "--n", "0", "--out", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rrg phantoms ") and "--n and --workers must be at least 1" in err


def test_rrg_demo_takes_the_apps_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _rrg()(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rrg demo ") and "--weights" in out and "--review" in out


def test_rrg_demo_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what find_spec reports for a package that is not installed
    with pytest.raises(SystemExit) as exit_info:
        _rrg()(["demo", "--port", "7999"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("rrg: error: rrg demo needs the web demo, which is not installed here (gradio missing): "
                   "pip install 'rrg-core[demo]'\n")
