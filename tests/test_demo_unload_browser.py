"""Closed tabs: when a browser tab closes, the server drops what its session held (the result and
the uploads' bytes) at once, not after Gradio's hour for closed sessions, and keeps what the
tabs still open hold. The app runs in this process so its sessions can be looked at."""
from __future__ import annotations

import os
import signal
import threading
import time

import gradio as gr
import pytest
from conftest import _free_port
from playwright.sync_api import expect, sync_playwright
from test_demo_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _upload

import app
from demo import service, ui
from demo.ui import EXAMPLES_DIR

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FORGET_WITHIN_S = 20  # Gradio sees the closed heartbeat connection, then runs the unload event


@pytest.fixture(scope="module")
def served(weights, tmp_path_factory):
    """(url, the page app.main built), with app.main running in a thread of this process."""
    if not CHROMIUM.is_file():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{CHROMIUM} is missing: apt-get install -y chromium")
    built, stop, exit_codes = [], threading.Event(), []
    build = ui.build
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ui, "build", lambda *args, **kwargs: built.append(build(*args, **kwargs)) or built[-1])
        patch.setattr(gr.Blocks, "block_thread", lambda self: stop.wait(300))  # then main closes the page
        patch.setattr(signal, "signal", lambda *args: None)  # app.main runs in a thread here
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))  # app.main sets it: restored after
        main = threading.Thread(target=lambda: exit_codes.append(app.main(["--weights", str(weights), "--port", str(port)])))
        main.start()
        try:
            deadline = time.monotonic() + 60
            while not built and time.monotonic() < deadline:
                time.sleep(0.1)
            assert built, "app.main built no page"
            yield f"http://127.0.0.1:{port}/", built[0][0]
        finally:
            stop.set()
            main.join(timeout=60)
    assert exit_codes == [0]


def held(page: gr.Blocks) -> dict[str, tuple[bool, int]]:
    """Per session that holds anything: (whether it holds a result, bytes of uploads it holds)."""
    sessions = {}
    for session_hash, session in list(page.state_holder.session_data.items()):
        values = list(session.state_data.values())
        has_result = any(isinstance(v, service.Evidence) for v in values)
        upload_bytes = sum(len(b) for v in values if isinstance(v, dict) for b in v.values() if isinstance(b, bytes))
        if has_result or upload_bytes:
            sessions[session_hash] = (has_result, upload_bytes)
    return sessions


def test_a_closed_tab_loses_its_result_and_uploads_at_once_and_open_tabs_keep_theirs(served):
    url, page = served
    example = EXAMPLES_DIR / "cardiomegaly.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        expect.set_options(timeout=TIMEOUT_MS)
        tabs = [browser.new_page(), browser.new_page()]
        for tab in tabs:
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(url)
            _upload(tab, example)
            expect(tab.locator("#xray-info")).to_contain_text("PNG")  # the upload is read and held, as a reader sees
            tab.get_by_role("button", name="Generate report").click()
            expect(tab.locator("#report textarea")).not_to_have_value("")
        before = held(page)
        assert len(before) == 2 and all(has_result and n == example.stat().st_size for has_result, n in before.values())

        tabs[0].close()
        deadline = time.monotonic() + FORGET_WITHIN_S
        while len(held(page)) == 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = held(page)
        assert len(after) == 1, f"the closed tab's session still holds {before} after {FORGET_WITHIN_S} s"
        assert after.items() <= before.items(), "the open tab keeps its result and uploads"
        tabs[1].get_by_role("button", name="Generate report").click()  # and can still use them
        expect(tabs[1].locator("#report textarea")).not_to_have_value("")
        browser.close()
