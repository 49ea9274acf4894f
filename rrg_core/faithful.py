"""Drafts that say what the findings say: choose among the decoder's beams, then repair.

The decoder is prompted with the predicted states but is not bound by them: it can write
"no pleural effusion" under a positive effusion prompt, or name the side opposite to where the
finding's own map lies. A radiologist forgives a draft that says less; never one that disagrees
with the evidence beside it. So every draft that reaches a user goes through
:func:`make_consistent`, with our labeler (:func:`rrg_core.labeler.label_report`) as referee:

1. **choose**: of the decoder's beams, the best-scoring one whose labels disagree least with the
   states (and whose sides agree with the maps);
2. **repair** it sentence by sentence: a sentence that contradicts a state (a negated positive,
   a stated negative, a hedge on a decided finding) is removed; a sentence naming the side
   opposite to its finding's map gets the map's side; every positive or uncertain finding the
   text still lacks gets a sentence from :mod:`rrg_core.sentence_bank` (the one the decoder
   finds most likely), in the place of the sentence it replaces; a sentence repeated word for
   word is said once.

After repair the text's labels equal the states for all 14 observations (No Finding by
CheXpert's rule, as in :func:`rrg_core.decisions.coherent`), whatever the decoder wrote.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .labeler import label_report
from .observations import OBSERVATIONS, State, chexpert_to_state
from .report_text import split_sentences
from .sentence_bank import SIDED, sentences_for

_SIDE_WORD = re.compile(r"\b(right|left)\b")
_BOTH_SIDES = re.compile(r"\b(?:bilateral\w*|both|bibasilar|biapical)\b")

# Picks one of several sentences for a finding: (candidates) -> index. The model passes the
# decoder's likelihood; the default takes the first.
SentenceChooser = Callable[[list[str]], int]
# A side the decoder named is corrected to the side holding the majority of the finding's map
# (the decoder's own side is right at chance, the map's majority about 93 % of the time on
# phantoms); a side the decoder did not name is only added where the map is clearly one-sided.
SIDE_SHARE = 0.5
CLEAR_SIDE_SHARE = 0.6
# What a draft says when nothing else it said survives and no finding is called.
NORMAL_SENTENCE = "no acute cardiopulmonary abnormality"


@dataclass
class Consistency:
    """What :func:`make_consistent` did to the decoder's output, for the reader and for measuring."""

    text: str  # the consistent draft (normalised spacing, as the decoder writes)
    beam: int  # which candidate was chosen (0 = the decoder's best)
    decoder_text: str  # the decoder's best candidate, untouched
    chosen_text: str  # the chosen candidate before repair
    mismatches_before: int  # label/side disagreements of the decoder's best candidate
    mismatches_chosen: int  # ... of the chosen candidate, before repair
    edits: list[str] = field(default_factory=list)  # one line per repair, for the reader

    def to_dict(self) -> dict:
        return {"beam": self.beam, "decoder_text": self.decoder_text, "edits": list(self.edits)}


def _said(state: int) -> State:
    """The three things a text can say of a finding: positive, uncertain, or neither (negative)."""
    state = State(int(state))
    return state if state in (State.POSITIVE, State.UNCERTAIN) else State.NEGATIVE


def required_states(states: Sequence[int]) -> dict[str, State]:
    """What the text must say of each observation."""
    return {name: _said(state) for name, state in zip(OBSERVATIONS, states)}


def text_states(text: str, labels: Mapping[str, int | None] | None = None) -> dict[str, State]:
    """The labeler's reading of ``text`` (or its ``labels``, where already computed) in the same
    three classes as :func:`required_states`."""
    labels = label_report(text) if labels is None else labels
    return {name: _said(chexpert_to_state(value)) for name, value in labels.items()}


def side_of(right_share: float | None, share: float = SIDE_SHARE) -> str | None:
    """The side a finding's frontal map shows ("right" = the patient's right) when more than
    ``share`` of its mass lies there (:func:`rrg_core.outputs.right_share`), else None."""
    if right_share is None:
        return None
    if right_share > share:
        return "right"
    return "left" if right_share < 1 - share else None


def named_sides(sentence: str) -> set[str]:
    """The sides a sentence names: {"right"}, {"left"}, both (also for "bilateral") or none."""
    sides = set(_SIDE_WORD.findall(sentence.lower()))
    return {"right", "left"} if _BOTH_SIDES.search(sentence.lower()) else sides


def mismatches(text: str, required: Mapping[str, State], sides: Mapping[str, str | None]) -> int:
    """Observations whose text state differs from the required one, plus positive sided
    findings whose sentences name only the side opposite to the map."""
    got = text_states(text)
    count = sum(got[o] != required[o] for o in OBSERVATIONS)
    for sentence in split_sentences(text):
        named = named_sides(sentence)
        for name, state in text_states(sentence).items():
            side = sides.get(name)
            if state == State.POSITIVE and side and name in SIDED and named == {_other(side)}:
                count += 1
    return count


def make_consistent(
    candidates: Sequence[str],
    states: Sequence[int],
    right_shares: Mapping[str, float] | None = None,
    choose: SentenceChooser | None = None,
) -> Consistency:
    """The draft to show for ``states`` (14, OBSERVATIONS order, already coherent), from the
    decoder's ``candidates`` (best first). ``right_shares`` maps a finding to the share of its
    frontal map on the patient's right (:attr:`rrg_core.outputs.Report.map_right_shares`)."""
    if not candidates:
        raise ValueError("make_consistent needs at least one decoder candidate")
    shares = dict(right_shares or {})
    sides = {name: side_of(share) for name, share in shares.items()}
    clear = {name: side_of(share, CLEAR_SIDE_SHARE) for name, share in shares.items()}
    required = required_states(states)
    scores = [mismatches(c, required, sides) for c in candidates]
    beam = min(range(len(candidates)), key=lambda i: (scores[i], i))
    result = Consistency(candidates[beam], beam, candidates[0], candidates[beam], scores[0], scores[beam])
    if beam:
        result.edits.append(f"chose the decoder's beam {beam + 1}, which agrees better with the findings")
    if scores[beam]:
        result.text = _repair(candidates[beam], required, sides, clear, choose or (lambda options: 0), result.edits)
    result.text = _without_repeats(result.text, result.edits)
    return result


def _without_repeats(text: str, edits: list[str]) -> str:
    """The text with a sentence said again word for word removed (decoders loop on templates)."""
    sentences = split_sentences(text)
    unique = list(dict.fromkeys(sentences))
    if len(unique) == len(sentences):
        return text
    edits.append(f"removed {len(sentences) - len(unique)} repeated sentence(s)")
    return " . ".join(unique) + " ."


def _repair(text: str, required: Mapping[str, State], sides: Mapping[str, str | None],
            clear: Mapping[str, str | None], choose: SentenceChooser, edits: list[str]) -> str:
    kept: list[str | None] = []  # None marks the place of a removed sentence
    removed_at: dict[str, int] = {}
    for sentence in split_sentences(text):
        labels = label_report(sentence)
        got = text_states(sentence, labels)
        # A sentence contradicts a finding it mentions in another state than the findings'.
        wrong = [o for o in OBSERVATIONS if o != "No Finding" and labels[o] is not None and got[o] != required[o]]
        if required["No Finding"] == State.POSITIVE and got["No Finding"] != State.POSITIVE:
            wrong.append("No Finding")  # an abnormality the findings do not call
        if not wrong:
            sentence = _fix_side(sentence, got, sides, edits)
        if sentence is None or wrong:
            for name in wrong or [o for o in SIDED if got[o] == State.POSITIVE]:
                removed_at.setdefault(name, len(kept))
            edits.append(f"removed \"{sentence or ''}\" ({', '.join(wrong) or 'sides disagree'})"
                         if sentence is not None else "removed a sentence whose findings lie on different sides")
            kept.append(None)
            continue
        kept.append(sentence)

    present = text_states(" . ".join(s for s in kept if s))
    inserts: dict[int, list[str]] = {}
    for name in OBSERVATIONS:
        if name == "No Finding" or required[name] == State.NEGATIVE or present[name] == required[name]:
            continue
        options = sentences_for(name, required[name], clear.get(name))
        sentence = options[choose(options)]
        inserts.setdefault(removed_at.get(name, len(kept)), []).append(sentence)
        edits.append(f"added \"{sentence}\" ({name}, {required[name].name.lower()})")
    out = []
    for i, sentence in enumerate([*kept, None]):
        out += inserts.get(i, [])
        if sentence:
            out.append(sentence)
    if not out:  # everything said contradicted the findings, and none is called
        out = [NORMAL_SENTENCE]
        edits.append(f"added \"{NORMAL_SENTENCE}\" (No Finding)")
    return " . ".join(out) + " ."


def _fix_side(sentence: str, got: Mapping[str, State], sides: Mapping[str, str | None],
              edits: list[str]) -> str | None:
    """The sentence with its side set to the maps' side; None where its findings' maps disagree
    with each other (the sentence is then replaced by one sentence per finding)."""
    named = named_sides(sentence)
    if len(named) != 1:
        return sentence  # no side, or both sides: nothing to correct
    wanted = {sides.get(o) for o in SIDED if got[o] == State.POSITIVE and sides.get(o)}
    if not wanted or wanted == named:
        return sentence
    if len(wanted) > 1:
        return None
    fixed = _SIDE_WORD.sub(lambda m: _other(m.group(1)), sentence)
    edits.append(f"changed the side in \"{sentence}\" to the {wanted.pop()}, where the finding's map lies")
    return fixed


def _other(side: str) -> str:
    return "left" if side == "right" else "right"
