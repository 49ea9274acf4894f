"""The 14 CheXpert observations, their four diagnostic states and the head/tail split.

Every module that talks about findings imports from here, so the order of the
observations is defined exactly once (it is the order of the classifier's rows,
of label vectors and of the prompt tokens).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)

# The 12 pathologies: everything but Support Devices and No Finding. No Finding is 1
# only when none of these is positive or uncertain (CheXpert's aggregation rule).
PATHOLOGIES: tuple[str, ...] = tuple(o for o in OBSERVATIONS if o not in ("Support Devices", "No Finding"))

# Supplementary Table 4 of the REVTAF paper.
HEAD: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Edema",
    "Atelectasis",
    "Pleural Effusion",
    "Support Devices",
)
TAIL: tuple[str, ...] = (
    "Lung Lesion",
    "Consolidation",
    "Pneumonia",
    "Pneumothorax",
    "Pleural Other",
    "Fracture",
    "No Finding",
)


class State(IntEnum):
    """The four diagnostic states of PromptMRG / REVTAF, in classifier column order."""

    BLANK = 0  # not mentioned
    POSITIVE = 1
    NEGATIVE = 2
    UNCERTAIN = 3


STATE_TOKENS: tuple[str, ...] = ("[BLA]", "[POS]", "[NEG]", "[UNC]")
STATE_NAMES: tuple[str, ...] = ("not mentioned", "positive", "negative", "uncertain")
# The words a reader may give for a state (the CLI's --state, the demo's table, the API): the
# names above, and "blank" or "none" for not mentioned.
STATE_WORDS: dict[str, State] = {**{name: State(i) for i, name in enumerate(STATE_NAMES)},
                                 "blank": State.BLANK, "none": State.BLANK}


def is_abnormal(labels: Mapping[str, int | None]) -> bool:
    """Whether CheXpert labels call a pathology positive (devices alone are not abnormal)."""
    return any(labels.get(o) == 1 for o in PATHOLOGIES)


def state_from_word(word: str) -> State | None:
    """The state a reader's word names, in any case; any unambiguous start of a word will do
    ("NEG", "unc"). None when it names no state, or several ("n")."""
    word = word.strip().lower()
    matches = {state for name, state in STATE_WORDS.items() if word and name.startswith(word)}
    return matches.pop() if len(matches) == 1 else None

_CHEXPERT_TO_STATE = {None: State.BLANK, 1: State.POSITIVE, 0: State.NEGATIVE, -1: State.UNCERTAIN}
_STATE_TO_CHEXPERT = {v: k for k, v in _CHEXPERT_TO_STATE.items()}


def chexpert_to_state(value: int | float | None) -> State:
    """Map a CheXpert value (1, 0, -1, None/NaN) to a :class:`State`."""
    if value is None or value != value:  # NaN from pandas-style tables
        return State.BLANK
    try:
        return _CHEXPERT_TO_STATE[int(value)]
    except KeyError:
        raise ValueError(f"not a CheXpert label value: {value!r} (expected 1, 0, -1 or None)") from None


def state_to_chexpert(state: int) -> int | None:
    """Map a :class:`State` back to the CheXpert convention (1, 0, -1, None)."""
    return _STATE_TO_CHEXPERT[State(state)]


def labels_to_states(labels: Mapping[str, int | None]) -> list[int]:
    """A CheXpert label dict (missing keys = not mentioned) as a state vector in OBSERVATIONS order."""
    unknown = set(labels) - set(OBSERVATIONS)
    if unknown:
        raise ValueError(f"unknown observation(s): {sorted(unknown)}")
    return [int(chexpert_to_state(labels.get(name))) for name in OBSERVATIONS]


def states_to_labels(states: Sequence[int]) -> dict[str, int | None]:
    """A state vector in OBSERVATIONS order as a CheXpert label dict."""
    if len(states) != len(OBSERVATIONS):
        raise ValueError(f"expected {len(OBSERVATIONS)} states, got {len(states)}")
    return {name: state_to_chexpert(s) for name, s in zip(OBSERVATIONS, states)}


def group_of(observation: str) -> str:
    """'head' or 'tail', as in the paper's supplementary Table 4 (HEAD and TAIL above)."""
    if observation in HEAD:
        return "head"
    if observation in TAIL:
        return "tail"
    raise ValueError(f"unknown observation: {observation!r}")
