"""Warm start: the page is served before torch, transformers and the weights are loaded, says so,
and requests wait for the model; the app's imports hold nothing that only training needs."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file

import app
from demo import service, ui
from demo.ui import EXAMPLES_DIR

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "faiss", "matplotlib")
TRAINING_ONLY = ("train", "rrg_core.metrics", "rrg_core.evaluation", "rrg_core.study_dataset", "rrg_core.indexing",
                 "pycocoevalcap", "matplotlib")
PROBE = """
import json, sys
from pathlib import Path
import app
from demo import service, storage, ui
loading = service.Loading(sys.argv[1])
ui.build(loading, storage.RunFolder(Path(sys.argv[2])))
before = [m for m in HEAVY if m in sys.modules]
loading.start().result()
after = [m for m in TRAINING_ONLY if m in sys.modules]
print(json.dumps({"before": before, "after": after}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_needs_no_torch_and_the_model_nothing_only_training_needs(weights, tmp_path):
    code = f"HEAVY, TRAINING_ONLY = {HEAVY!r}, {TRAINING_ONLY!r}\n" + PROBE
    done = subprocess.run([sys.executable, "-c", code, str(weights), str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, check=True)
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert modules == {"before": [], "after": []}


def test_app_answers_before_the_model_is_loaded_and_a_request_waits_for_it(weights, monkeypatch):
    release, answered, exit_codes, reports = threading.Event(), threading.Event(), [], []
    load_model = service.Loading._load_model
    monkeypatch.setattr(service.Loading, "_load_model", lambda self: release.wait(120) and load_model(self))
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: answered.wait(120))  # then main closes the page
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # app.main runs in a thread here
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    main = threading.Thread(target=lambda: exit_codes.append(app.main(["--weights", str(weights), "--port", str(port)])))
    main.start()
    try:
        page = _wait_for(url)
        assert ui.LOADING in page and "Tiny test weights." in page  # served, and it says the model is loading
        request = threading.Thread(target=lambda: reports.append(Client(url, verbose=False).predict(
            handle_file(str(EXAMPLES_DIR / "normal.png")), None, 1, 10, api_name="/generate")))
        request.start()
        request.join(timeout=3)
        assert request.is_alive() and not reports, "no report can exist before the model is loaded"
        release.set()
        request.join(timeout=120)
        answered.set()
        main.join(timeout=120)
        assert exit_codes == [0] and reports and reports[0][0], "the waiting request gets its report"
    finally:
        release.set()
        answered.set()
        main.join(timeout=120)


def _wait_for(url: str, timeout_s: float = 60) -> str:
    """The page's HTML once the server answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_file_that_is_not_safetensors_stops_the_app_with_one_sentence(tmp_path, weights, capsys, monkeypatch):
    """Refused before the page is served (the weights that only fail once torch has loaded them:
    tests/test_weights_validation.py, the full shape check)."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave pytest's handlers alone
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        (tmp_path / name).write_bytes((weights / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    assert app.main(["--weights", str(tmp_path), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("app.py: cannot start: ") and len(err.splitlines()) == 1
