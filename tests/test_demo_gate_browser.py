"""A real browser on the demo with gated weights: a photograph gets the banner and no draft, a
SynthCXR phantom gets its draft and no banner. Screenshots go to /tmp/demo_shots/."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CARD, serve
from model_fixtures import fit_tiny_gate, tiny_model
from playwright.sync_api import expect, sync_playwright
from test_demo_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, TIMEOUT_MS, _upload

from demo.ui import EXAMPLES_DIR
from rrg_core.gate import COLOUR_REFUSAL
from rrg_core.negatives import KINDS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not CHROMIUM.is_file():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{CHROMIUM} is missing: apt-get install -y chromium")
    root = tmp_path_factory.mktemp("gated_demo")
    model = fit_tiny_gate(tiny_model()[0], root)
    model.save_pretrained(root / "weights")
    (root / "weights" / "README.md").write_text(CARD)
    SHOTS.mkdir(exist_ok=True)
    with serve(root / "weights", root) as (url, _, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        page.goto(url)
        yield page
        browser.close()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "holiday.jpg"
    KINDS["scene"](np.random.default_rng(4)).save(path)
    return path


def test_a_photograph_gets_the_banner_and_no_draft(page, photo):
    _upload(page, photo)
    expect(page.locator("#xray-info")).to_contain_text("Frontal view: JPEG")  # read and held before Generate
    page.get_by_role("button", name="Generate report").click()
    banner = page.locator("#gate-banner")
    expect(banner).to_contain_text(COLOUR_REFUSAL)
    expect(page.locator("#report textarea")).to_have_value("")
    expect(page.locator("#findings").get_by_role("row")).to_have_count(1)  # the header only
    page.screenshot(path=str(SHOTS / "gate_photo.png"), full_page=True)


def test_a_phantom_gets_its_draft_and_no_banner(page):
    _upload(page, EXAMPLES_DIR / "cardiomegaly.png")
    expect(page.locator("#gate-banner")).to_be_hidden()  # the previous study's banner goes with a new upload
    expect(page.locator("#xray-info")).to_contain_text("PNG")
    page.get_by_role("button", name="Generate report").click()
    expect(page.locator("#heatmap img")).to_be_visible()
    expect(page.locator("#report textarea")).not_to_have_value("")
    expect(page.locator("#gate-banner")).to_be_hidden()
    expect(page.locator("#references").get_by_role("row").nth(1)).to_contain_text(" %")  # closer than ... of typical matches
    expect(page.locator("#card-headline")).to_contain_text("no measured results on the model card")
    page.screenshot(path=str(SHOTS / "gate_phantom.png"), full_page=True)
