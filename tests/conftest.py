"""Shared test configuration.

Tests marked ``real_data`` read ../shared/data/iu_xray and skip where it is absent. CI sets
RRG_REQUIRE_REAL_DATA=1, and then such a skip is turned into a failure: the real-data checks
must never silently vanish there.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from model_fixtures import REPORTS, tiny_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
IU_XRAY = REPO_ROOT.parent / "shared" / "data" / "iu_xray"


@pytest.fixture(scope="session")
def iu_xray_root() -> Path:
    if not (IU_XRAY / "annotation.json").is_file():
        pytest.skip(f"real IU X-Ray data not found at {IU_XRAY}")
    return IU_XRAY


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("real_data") and os.environ.get("RRG_REQUIRE_REAL_DATA") == "1":
        report.outcome = "failed"
        report.longrepr = f"real-data test skipped but RRG_REQUIRE_REAL_DATA=1: {report.longrepr}"


# ---------------------------------------------------------------- one demo server for the e2e and browser tests

REPO = REPO_ROOT
START_TIMEOUT_S = 90
CARD = "---\nlicense: apache-2.0\n---\n# Tiny\n\nTiny test weights.\n\n## Training data\n\nSix made-up reports.\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    model = tiny_model()[0]
    model.index.texts = None
    folder = tmp_path_factory.mktemp("weights")
    model.save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory) -> Path:
    """An R2Gen-layout folder whose ids match the tiny index (s0..s5)."""
    folder = tmp_path_factory.mktemp("reference_data")
    entries = [{"id": f"s{i}", "report": REPORTS[i], "image_path": [f"s{i}.png"], "labels": {}} for i in range(6)]
    (folder / "annotation.json").write_text(json.dumps({"train": entries}))
    return folder


@pytest.fixture(scope="session")
def server(weights, reference_data, tmp_path_factory):
    """(url, path of the server's log, seconds until it answered)."""
    with serve(weights, tmp_path_factory.mktemp("server"), "--reference-data", str(reference_data)) as running:
        yield running


@contextlib.contextmanager
def serve(weights: Path, log_dir: Path, *args: str):
    """Run ``python app.py *args`` on ``weights`` until the block ends; yields (url, log, start seconds)."""
    port, log = _free_port(), log_dir / "server.log"
    env = {**os.environ, "RRG_WEIGHTS": str(weights), "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"app.py did not answer within {START_TIMEOUT_S} s: {log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        yield url, log, time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=20)
