"""A real browser on the demo: Playwright driving Debian's chromium against `python app.py`.

Screenshots go to /tmp/demo_shots/ (never the repository) for a person to look at.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from model_fixtures import REPORTS
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from demo import rendering
from demo.ui import EXAMPLES_DIR
from rrg_core.labeler import label_report
from rrg_core.pipeline import ReportPipeline
from rrg_core.xray_io import read_xray

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
SHOTS = Path("/tmp/demo_shots")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def page(server):
    if not CHROMIUM.is_file():  # CI installs it (.ci/run), so there a missing browser is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{CHROMIUM} is missing: apt-get install -y chromium")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)  # assertions wait 5 s by default: too short on a loaded machine
        page.goto(server[0])
        yield page
        browser.close()


def _upload(page, path: Path) -> None:
    """Put a file into the frontal view slot, replacing what is there."""
    clear = page.locator("#frontal").get_by_role("button", name="Clear")
    if clear.count():
        clear.click()
    page.locator("#frontal input[type=file]").set_input_files(str(path))


def test_upload_generate_and_see_report_references_and_heatmap(page, weights):
    expect(page.locator("#notice")).to_contain_text("Research use only — not for diagnosis")
    expect(page.locator("#weights")).to_contain_text("Tiny test weights.")
    example = EXAMPLES_DIR / "cardiomegaly.png"
    _upload(page, example)
    expect(page.locator("#xray-info")).to_contain_text("PNG, 256 × 256 px")
    page.get_by_role("button", name="Generate report").click()
    heatmap = page.locator("#heatmap img")
    expect(heatmap).to_be_visible()

    model = ReportPipeline.from_pretrained(weights, texts_from={f"s{i}": REPORTS[i] for i in range(6)})
    expected = model([read_xray(example)])[0]  # the page's default decoding = the config's
    expect(page.locator("#report textarea")).to_have_value(expected.text)
    # The first rows on the page are exactly what the library's report renders to.
    rows = {"#references": rendering.references_table(expected)[0], "#findings": rendering.findings_table(expected)[0]}
    for table, row in rows.items():
        name = " ".join(str(cell) for cell in row if cell != "")
        expect(page.locator(table).get_by_role("row", name=name, exact=True)).to_be_visible()
    assert "★ global prompt" in rendering.references_table(expected)[0] and expected.references[0].text
    assert heatmap.evaluate("img => img.naturalWidth") > 300
    page.screenshot(path=str(SHOTS / "generated.png"), full_page=True)

    # Another prompt from the dropdown replaces the map.
    before = heatmap.get_attribute("src")
    page.get_by_label("Prompt").click()
    page.get_by_role("option", name=re.compile("^Region: ")).first.click()
    expect(heatmap).not_to_have_attribute("src", before)

    # Edits to the draft reach the .json download.
    page.locator("#report textarea").click()
    page.keyboard.press("End")
    page.keyboard.type(" reviewed .")
    expect(page.locator("#report textarea")).to_have_value(expected.text + " reviewed .")
    payload = _download_json_until(page, lambda p: p["report"] == expected.text + " reviewed .")
    assert payload["edited"] is True and payload["draft"] == expected.text


def _fresh(page):
    """A new tab on the same page, with the same timeouts."""
    tab = page.context.browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(page.url)
    return tab


def _edit_state(page, finding: str, text: str):
    """Type ``text`` into a finding's state cell; returns the finding's row. The table is redrawn
    while a result arrives (and scrolls inside the page), so each try locates the cell afresh."""
    for _ in range(10):
        row = page.locator("#findings [role=row]").filter(has=page.get_by_role("gridcell", name=finding, exact=True))
        cell = row.get_by_role("gridcell").nth(rendering.STATE_COLUMN)
        try:
            cell.scroll_into_view_if_needed(timeout=5_000)
            cell.dblclick(timeout=5_000)
            cell.locator("textarea, input").fill(text, timeout=5_000)
            page.keyboard.press("Enter")
            expect(cell).to_contain_text(text, timeout=5_000)
            return row
        except (PlaywrightError, AssertionError):
            page.wait_for_timeout(500)
    raise AssertionError(f"could not type into the state cell of {finding}")


def _download_json_until(page, condition, tries: int = 20) -> dict:
    """The .json download once it satisfies ``condition`` (its update is an async server round trip)."""
    for _ in range(tries):
        with page.expect_download() as download:
            page.get_by_role("button", name="Download .json").click()
        payload = json.loads(Path(download.value.path()).read_text())
        if condition(payload):
            return payload
        page.wait_for_timeout(250)
    raise AssertionError(f"the download never satisfied the condition: {payload}")


def test_a_bad_file_shows_its_sentence_and_clears_the_old_report(page, tmp_path):
    expect(page.locator("#report textarea")).not_to_have_value("")  # the first test's report
    _upload(page, _text_file(tmp_path))
    expect(page.locator("#xray-info")).to_contain_text("Frontal view: This is a text file, not an image")
    expect(page.locator("#report textarea")).to_have_value("")


def test_generate_on_a_bad_file_puts_its_sentence_on_the_upload(page, tmp_path):
    """Generate's validator refuses the file before the queue, with its sentence on the upload itself.
    In a new tab: on CI, a tab that had drafted reports before twice kept no message there."""
    page = _fresh(page)
    _upload(page, _text_file(tmp_path))
    expect(page.locator("#xray-info")).to_contain_text("Frontal view: This is a text file, not an image")
    on_upload = page.locator("#frontal").get_by_text("Frontal view: This is a text file, not an image")
    for _ in range(3):  # on a loaded machine Gradio's page can drop a click made while the upload's events settle
        page.get_by_role("button", name="Generate report").click()
        try:
            expect(on_upload).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            pass
    expect(on_upload).to_be_visible()
    expect(page.locator("#report textarea")).to_have_value("")
    page.wait_for_timeout(1000)  # let the message's fade-in finish for the screenshot
    page.screenshot(path=str(SHOTS / "bad_file.png"))
    page.close()


def _text_file(folder: Path) -> Path:
    bad = folder / "scan.png"
    bad.write_text("a text file named like an image")
    return bad


def test_the_dicom_example_from_the_gallery(page):
    page.get_by_role("button", name="pleural effusion (DICOM)").click()
    expect(page.locator("#xray-info")).to_contain_text("DICOM, 256 × 256 px; modality DX; view position PA")
    page.get_by_role("button", name="Generate report").click()
    expect(page.locator("#heatmap img")).to_be_visible()
    expect(page.locator("#report textarea")).not_to_have_value("")
    page.screenshot(path=str(SHOTS / "dicom_example.png"), full_page=True)


def test_the_reader_overrules_a_finding_and_the_draft_follows(page):
    page = _fresh(page)  # a new tab: nothing left from the tests before
    _upload(page, EXAMPLES_DIR / "normal.png")
    expect(page.locator("#xray-info")).to_contain_text("PNG")
    page.get_by_role("button", name="Generate report").click()
    report = page.locator("#report textarea")
    expect(report).not_to_have_value("")
    row = _edit_state(page, "Pneumothorax", "pos")
    page.get_by_role("button", name="Redraft with these findings").click()
    expect(row).to_contain_text("set by the reader")
    expect(report).to_have_value(re.compile("pneumothorax", re.IGNORECASE))
    assert label_report(report.input_value())["Pneumothorax"] == 1
    payload = _download_json_until(page, lambda p: p["overrides"] == {"Pneumothorax": "positive"})
    assert payload["report"] == report.input_value()
    page.screenshot(path=str(SHOTS / "redraft.png"), full_page=True)

    page.get_by_role("button", name="Back to the model's findings").click()
    expect(row).not_to_contain_text("set by the reader")
    payload = _download_json_until(page, lambda p: p["overrides"] == {})
