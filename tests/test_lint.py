"""ruff, configured in pyproject.toml, finds nothing: the README's test command is also the lint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"ruff check . (see [tool.ruff] in pyproject.toml) found:\n{run.stdout}{run.stderr}"
