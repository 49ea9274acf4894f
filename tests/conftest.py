"""Shared test configuration.

Tests marked ``real_data`` read ../shared/data/iu_xray and skip where it is absent. CI sets
RRG_REQUIRE_REAL_DATA=1, and then such a skip is turned into a failure: the real-data checks
must never silently vanish there.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
