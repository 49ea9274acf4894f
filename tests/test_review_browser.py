"""A real browser on the Review page (`python app.py --review`): a reader goes through three
studies with the keyboard, comes back, resumes after a reload, a second reader works at the
same time, and the study is exported; then the blinded comparison on a second server.

Screenshots go to /tmp/demo_shots/ (never the repository).
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, serve
from model_fixtures import REPORTS, write_tiny_dataset
from playwright.sync_api import expect, sync_playwright
from test_demo_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, TIMEOUT_MS

from demo.review import blind_text
from rrg_core.__main__ import main as cli
from rrg_core.pipeline import ReportPipeline
from rrg_core.reader_study import ReaderStudy, worklist
from rrg_core.xray_io import read_xray

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("review_data"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        expect.set_options(timeout=TIMEOUT_MS)
        yield launched
        launched.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url + "review")
    return page


def _drafts(weights: Path, dataset: Path) -> dict[str, str]:
    """What the library drafts for each test study with the weights' default options."""
    model = ReportPipeline.from_pretrained(weights, texts_from={f"s{i}": REPORTS[i] for i in range(6)})
    return {item.study_id: model([[read_xray(p) for p in item.image_paths]])[0].text
            for item in worklist(dataset, "test")}


def _type_count(page, column: str, value: str) -> None:
    field = page.locator(f"#review-{column} input")
    field.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)


def _choose(page, label: str) -> None:
    page.get_by_label(label, exact=True).focus()
    page.keyboard.press("Space")


def test_three_studies_with_the_keyboard_resume_and_export(browser, weights, reference_data, dataset, tmp_path_factory):
    db = tmp_path_factory.mktemp("review_db") / "study.sqlite"
    args = ["--reference-data", str(reference_data), "--review", str(dataset), "--reviewer", "ann", "--review-db", str(db)]
    drafts = _drafts(weights, dataset)
    with serve(weights, tmp_path_factory.mktemp("review_server"), *args) as (url, _, _):
        page = _open(browser, url)
        study, progress = page.locator("#review-study"), page.locator("#review-progress")
        expect(study).to_contain_text("Study 1 of 4: test0")
        expect(progress).to_contain_text("0 of 4 reviewed")
        expect(page.locator("#review-draft textarea")).to_have_value(drafts["test0"])  # the library's draft
        expect(page.locator("#review-reference textarea")).to_have_value(REPORTS[0])
        heatmap = page.locator("#review-heatmap img")
        heatmap.scroll_into_view_if_needed()  # loaded lazily
        expect(heatmap).to_be_visible()
        assert heatmap.evaluate("img => img.naturalWidth") > 300
        expect(page.locator("#review-references")).to_contain_text("★ global prompt")
        page.screenshot(path=str(SHOTS / "review.png"), full_page=True)
        page.locator("#review-study").scroll_into_view_if_needed()

        # Study 1: two counts, minor edits, a comment; save and next.
        _type_count(page, "false_finding_significant", "2")
        page.keyboard.press("Tab")
        page.keyboard.type("1")
        _choose(page, "Minor edits")
        page.locator("#review-comments textarea").focus()
        page.keyboard.type("left base overcalled")
        page.keyboard.press("Control+Enter")
        expect(study).to_contain_text("Study 2 of 4: test1")
        expect(progress).to_contain_text("1 of 4 reviewed")
        expect(page.locator("#review-status")).to_contain_text("Saved test0")
        # Study 2: accept as is; save, then next.
        _choose(page, "Accept as is")
        page.keyboard.press("Control+s")
        expect(progress).to_contain_text("2 of 4 reviewed")
        page.keyboard.press("Alt+n")
        expect(study).to_contain_text("Study 3 of 4: test2")
        # Study 3: an omission, rejected, the report corrected.
        _type_count(page, "missed_finding_significant", "1")
        _choose(page, "Reject")
        page.locator("#review-edited textarea").focus()
        page.keyboard.press("Control+A")
        page.keyboard.type("Small left pleural effusion.")
        page.keyboard.press("Control+Enter")
        expect(study).to_contain_text("Study 4 of 4: test3")
        expect(progress).to_contain_text("3 of 4 reviewed")

        # Back: the saved judgment is shown again.
        page.keyboard.press("Alt+p")
        expect(study).to_contain_text("Study 3 of 4: test2")
        expect(page.locator("#review-missed_finding_significant input")).to_have_value("1")
        expect(page.get_by_label("Reject", exact=True)).to_be_checked()
        expect(page.locator("#review-edited textarea")).to_have_value("Small left pleural effusion.")
        # A reload resumes at the first study not yet reviewed.
        page.reload()
        expect(study).to_contain_text("Study 4 of 4: test3")
        expect(progress).to_contain_text("3 of 4 reviewed")

        # A second reader at the same time, under their own name.
        other = _open(browser, url)
        name = other.locator("#review-reviewer").locator("textarea, input")
        expect(other.locator("#review-study")).to_contain_text("Study 4 of 4")  # ann's place, until a name is typed
        name.fill("bob")
        name.press("Enter")
        expect(other.locator("#review-progress")).to_contain_text("0 of 4 reviewed")
        expect(other.locator("#review-study")).to_contain_text("Study 1 of 4: test0")
        _choose(other, "Major edits")
        other.keyboard.press("Control+s")
        expect(other.locator("#review-progress")).to_contain_text("1 of 4 reviewed")
        other.close()

        out = db.parent / "export"  # exported while the server still runs
        assert cli(["review-export", str(db), "--out", str(out), "--bootstrap", "100"]) == 0
    with open(out / "judgments.csv", newline="") as f:
        rows = {(r["reviewer"], r["study_id"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("ann", "test0"), ("ann", "test1"), ("ann", "test2"), ("bob", "test0")}
    first = rows["ann", "test0"]
    assert (first["false_finding_significant"], first["false_finding_insignificant"], first["acceptability"]) == \
        ("2", "1", "minor")
    assert first["comments"] == "left base overcalled" and first["draft"] == drafts["test0"]
    assert first["edited_report"] == drafts["test0"]  # untouched: the draft itself
    assert rows["ann", "test2"]["edited_report"] == "Small left pleural effusion."
    assert rows["ann", "test1"]["acceptability"] == "accept" and rows["bob", "test0"]["acceptability"] == "major"
    assert "4 reviews of 3 studies by ann, bob" in (out / "summary.md").read_text()


def test_the_blinded_comparison(browser, weights, reference_data, dataset, tmp_path_factory):
    db = tmp_path_factory.mktemp("blinded_db") / "study.sqlite"
    args = ["--reference-data", str(reference_data), "--review", str(dataset), "--reviewer", "ann", "--review-db",
            str(db), "--blinded"]
    drafts = _drafts(weights, dataset)
    with serve(weights, tmp_path_factory.mktemp("blinded_server"), *args) as (url, _, _):
        page = _open(browser, url)
        expect(page.locator("#review-study")).to_contain_text("Study 1 of 4: test0")
        left, right = page.locator("#review-left textarea"), page.locator("#review-right textarea")
        expect(left).not_to_have_value("")
        shown = {left.input_value(), right.input_value()}
        assert shown == {blind_text(drafts["test0"]), blind_text(REPORTS[0])}
        # Nothing that belongs to the draft alone is on the page.
        for evidence in ("#review-draft", "#review-findings", "#review-references", "#review-heatmap"):
            assert page.locator(evidence).count() == 0
        assert not re.search(r"draft side|\bdraft_side\b", page.content())
        draft_on_left = left.input_value() == blind_text(drafts["test0"])
        _choose(page, "Report A is better" if draft_on_left else "Report B is better")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#review-progress")).to_contain_text("1 of 4 compared")
        page.screenshot(path=str(SHOTS / "review_blinded.png"), full_page=True)
    (row,) = ReaderStudy(db).comparison_rows()
    assert row["draft_side"] == ("left" if draft_on_left else "right") and row["preferred"] == "draft"


@pytest.mark.parametrize("option, sentence", [
    (["--review", "/nonexistent/worklist"], "the review worklist /nonexistent/worklist is not a folder"),
    (["--review", "{empty}", "--blinded"], "holds no studies to review"),
])
def test_a_worklist_that_cannot_be_used_stops_the_start(weights, tmp_path, option, sentence):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in option]
    env = {**os.environ, "RRG_WEIGHTS": str(weights), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "app.py", *args, "--review-db", str(tmp_path / "db.sqlite")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("app.py: cannot start: ") and sentence in done.stderr
    assert done.stderr.count("\n") == 1  # one sentence, no traceback
