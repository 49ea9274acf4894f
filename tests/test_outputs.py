"""Report and AttentionMap: the evidence handed to users, without tensors."""
from __future__ import annotations

import numpy as np
import pytest

from rrg_core.observations import OBSERVATIONS, State
from rrg_core.outputs import AttentionMap, Report


def _map(heatmap: np.ndarray, view: int = 0, observation: str | None = "Pleural Effusion") -> AttentionMap:
    return AttentionMap("pleural effusion", "region", heatmap / heatmap.sum(), view=view, observation=observation)


def test_the_right_share_is_the_mass_on_the_images_left_half():
    """A frontal radiograph is displayed with the patient's right on the image's left."""
    heatmap = np.zeros((4, 6), np.float32)
    heatmap[:, 1] = 3  # image left: the patient's right
    heatmap[:, 4] = 1
    assert _map(heatmap).right_share() == pytest.approx(0.75)
    odd = np.zeros((2, 5), np.float32)
    odd[:, 2] = 1  # the middle column counts half to each side
    odd[0, 0] = 2
    assert _map(odd).right_share() == pytest.approx((2 + 1) / 4)


def test_findings_carry_the_side_of_the_frontal_finding_map_only():
    left_sided = np.zeros((8, 8), np.float32)
    left_sided[5:, 6:] = 1  # the patient's left costophrenic angle
    lateral = np.ones((8, 8), np.float32)
    report = Report(
        text="small left pleural effusion .",
        probabilities={o: [0.25] * 4 for o in OBSERVATIONS},
        states=[int(State.BLANK)] * len(OBSERVATIONS),
        attention=[_map(left_sided), _map(lateral, view=1), _map(lateral, observation=None)],
    )
    rows = {row["observation"]: row for row in report.findings()}
    assert rows["Pleural Effusion"]["map_right_share"] == 0.0
    assert rows["Cardiomegaly"]["map_right_share"] is None
    exported = {row["observation"]: row["map_right_share"] for row in report.to_dict()["findings"]}
    assert exported["Pleural Effusion"] == 0.0 and exported["Cardiomegaly"] is None  # the JSON export has it
