from __future__ import annotations

import pytest

from rrg_core.observations import (
    HEAD,
    OBSERVATIONS,
    PATHOLOGIES,
    TAIL,
    State,
    chexpert_to_state,
    group_of,
    labels_to_states,
    states_to_labels,
)


def test_head_and_tail_partition_the_observations():
    assert set(HEAD) | set(TAIL) == set(OBSERVATIONS)
    assert not set(HEAD) & set(TAIL)
    assert len(OBSERVATIONS) == 14 and len(PATHOLOGIES) == 12
    assert group_of("Fracture") == "tail" and group_of("Cardiomegaly") == "head"


def test_label_state_round_trip():
    labels = {"Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0}
    states = labels_to_states(labels)
    assert states[OBSERVATIONS.index("Cardiomegaly")] == State.POSITIVE
    assert states[OBSERVATIONS.index("Edema")] == State.UNCERTAIN
    assert states[OBSERVATIONS.index("Pneumothorax")] == State.NEGATIVE
    assert states[OBSERVATIONS.index("Fracture")] == State.BLANK
    back = states_to_labels(states)
    assert {k: v for k, v in back.items() if v is not None} == labels


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        chexpert_to_state(2)
    with pytest.raises(ValueError):
        labels_to_states({"Heart Attack": 1})
    assert chexpert_to_state(float("nan")) == State.BLANK


def test_a_readers_state_word_is_read_the_same_everywhere():
    """One vocabulary for the CLI's --state, the API's overrides and the demo's table."""
    from rrg_core.decisions import parse_overrides
    from rrg_core.observations import state_from_word

    assert [state_from_word(w) for w in ("positive", "NEG", " unc ", "blank", "none", "not mentioned")] == [
        State.POSITIVE, State.NEGATIVE, State.UNCERTAIN, State.BLANK, State.BLANK, State.BLANK]
    assert state_from_word("n") is None and state_from_word("maybe") is None and state_from_word("") is None
    assert parse_overrides({"edema": "pos", "Pneumothorax": "none"}) == {"Edema": State.POSITIVE,
                                                                          "Pneumothorax": State.BLANK}
