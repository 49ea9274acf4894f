"""The load/soak script in its short form (benchmarks/soak_demo.py prints the full form's figures):
a burst larger than a tiny queue, SIGTERM in the middle of a burst, and broken weight folders.
Only what must always hold is asserted here; no timing or memory figure is."""
from __future__ import annotations

import pytest

from benchmarks import soak_demo

pytestmark = pytest.mark.slow


def test_short_soak_loses_nothing_and_leaves_no_file(weights):
    figures = soak_demo.main(["--weights", str(weights), "--requests", "8", "--bad", "2", "--settle-s", "0",
                              "--queue-size", "1", "--programs", "CLI"])

    # The burst (8 requests, a queue of 1): every request answered, refused with its file's sentence,
    # or told to retry later; the uploads of all of them deleted, read or not.
    assert figures.requests == 8 and set(figures.outcomes) <= {"answered", "refused", "busy"}, figures.lost
    assert figures.outcomes.get("answered", 0) >= 1
    assert all(text.startswith("Frontal view: ") for text in figures.refusals)
    assert all("retry in about" in text and "Retry-After: " in text for text in figures.busy_answers)
    assert figures.files_left_after_burst["upload"] == 0

    assert figures.sigterm_exit_code == 0 and figures.files_left_after_sigterm == 0

    assert {row["folder"] for row in figures.bad_weights} == {
        "config value of the wrong type", "config that does not match the weights", "all-NaN weights",
        "corrupt weights file"}
    for row in figures.bad_weights:
        assert row["exit"] == 2 and row["stderr_lines"] == 1, row
