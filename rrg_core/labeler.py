"""A rule-based CheXpert-style report labeler for the 14 observations.

Clinical efficacy metrics label generated and reference reports with the same
labeler; ours needs no Java, no parser and no network, and is fast enough to label
every beam during evaluation. It follows the logic of the CheXpert labeler
(Irvin et al. 2019, a NegBio-style pipeline): find mentions of each observation,
classify each mention as uncertain / negative / positive, aggregate per report.
Instead of dependency parses, negation and hedges reach a mention through a clause
(stopped by "but", "however", "although", ..., and by a comma before a grade or a side:
"no pneumothorax, mild cardiomegaly"), and predicates after a mention
("... are within normal limits", "... cannot be excluded") reach back over the
coordinated subject it belongs to ("the heart size and pulmonary vascularity").

Conventions, where CheXpert leaves a choice or is known to err:

* A mention of the heart or the mediastinum only counts with something said about
  its size: "normal heart size" -> Cardiomegaly 0, "heart size is enlarged" -> 1,
  "borderline heart size" -> -1; "the heart and lungs have not changed" and
  "stable cardiomediastinal silhouette" -> not mentioned (CheXpert: 1 and -1; neither
  says anything about size). "Normal cardiomediastinal silhouette" is Enlarged
  Cardiomediastinum 0 only, and any cardiac or mediastinal contour counts as the
  cardiomediastinal one (both as CheXpert).
* "No new focal opacity" is negative (CheXpert: uncertain); a stable or unchanged
  finding is positive.
* Vascular congestion, blunting of a costophrenic angle and mentions joined by
  "or"/"versus" are uncertain, and so is "likely" (CheXpert: positive); on IU X-Ray that word
  is masked as "XXXX" ("opacities, XXXX subsegmental atelectasis"), read as such where
  "likely" is the reading.
* Calcified nodules and granulomas are not Lung Lesion (as CheXpert: healed, benign;
  phrases/mention/lung_lesion.txt and phrases/unmention/lung_lesion.txt in its repository);
  interstitial markings and scarring are Lung Opacity (as CheXpert).
* Support Devices also counts surgical clips, stents and sternotomy wires (CheXpert
  does not).
* No Finding is 1 only when no pathology is positive or uncertain and no other
  abnormality (emphysema, hernia, granuloma, scoliosis, degenerative change, ...;
  CheXpert's phrases/mention/no_finding.txt) is reported; otherwise it is left blank, as in
  CheXpert's stages/aggregate.py (which counts that list among the findings). Support
  Devices and what is not on that list (a tortuous aorta, a spinal stimulator) leave it 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .observations import OBSERVATIONS
from .report_text import split_sentences

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


def _rx(pattern: str) -> re.Pattern[str]:
    """Verbose regexes, so that long phrase lists can wrap; a literal space is written ``\\ ``."""
    return re.compile(pattern, re.VERBOSE)


@dataclass(frozen=True)
class _Concept:
    """One kind of mention. ``observation`` None: an abnormality that only rules out No Finding."""

    observation: str | None
    mention: re.Pattern[str]
    exclude: re.Pattern[str] | None = None
    # Heart and mediastinum: the mention needs a size statement (_SIZE_ABNORMAL or a negation) to count.
    needs_size: bool = False
    # A mention that is uncertain by itself ("vascular congestion").
    hedged: bool = False


_CONCEPTS: tuple[_Concept, ...] = (
    _Concept(
        "Enlarged Cardiomediastinum",
        # "mediastinal" only where it describes the silhouette, not nodes, clips or granulomas
        _rx(r"""\b(?:cardio[ -]?)?mediastinum\b | \bpericardial\ silhouette | \bcontours?\b
                | \b(?:cardio[ -]?)?mediastinal(?=\ (?:and\ \w+\ )?(?:silhouettes?|contours?|width|configuration
                                                       |shadows?|structures?|margins?|size|appearance))"""),
        # CheXpert reads any contour as the cardiomediastinal one; not those of bones or hila.
        exclude=_rx(r"""\b(?:rib|clavic\w*|hilar|bony|osseous|diaphragm\w*|soft\ tissue)\ contours?
                        | \bcontours?\ (?:deformit\w*|irregularit\w*|abnormalit\w*)"""),
        needs_size=True,
    ),
    _Concept("Enlarged Cardiomediastinum", _rx(r"\bwidened\ mediastinum | \bmediastinal\ widening")),
    _Concept("Cardiomegaly", _rx(r"\bcardiomegaly | \bcardiac\ enlargement | \benlarged\ heart")),
    _Concept(
        "Cardiomegaly",
        _rx(r"""\bheart\b(?!\ failure) | \bcardiac\ (?:silhouettes?|size|shadows?|contours?|borders?|diameter)
                | \bcardiac(?=\ and\ mediastinal)"""),
        # The heart as a landmark: "projected over the heart", "left heart border".
        exclude=_rx(r"""\b(?:over(?:lying)?|behind|within|into|through|along|near|to)\ (?:the\ )?(?:left\ |right\ )?
                        heart\b | \bheart\ (?:border|margin)s?"""),
        needs_size=True,
    ),
    _Concept(
        "Lung Opacity",
        _rx(r"""\bopaci\w* | \binfiltrat\w* | \bair[ -]?space\ (?:disease|process) | \bhaz(?:y|iness)\b
                | \b(?:increased|airspace|patchy|hazy|streaky|ill-defined|interstitial|reticular|focal)\ densit\w*
                | \bscar(?:s|ring|red)?\b | \bfibros\w* | \bground[ -]glass | \breticula\w*
                | \binterstitial\ (?:markings?|patterns?|prominence|changes?|disease|thickening)"""),
        exclude=_rx(r"pleural[ -](?:parenchymal\ )?scar\w*"),
    ),
    _Concept(
        "Lung Lesion",
        _rx(r"""\bnodul\w* | \bmass(?:es|-?like)?\b | \blesions?\b | \btumou?rs?\b | \bneoplas\w* | \bcarcinoma\w*
                | \bmalignan\w* | \bmetasta\w*"""),
        exclude=_rx(r"""\b(?:bony|bone|osseous|lytic|sclerotic|blastic|skin|cutaneous|soft\ tissue|breast|nipple)
                        \ (?:lesions?|mass(?:es)?|nodul\w*) | (?<!non)(?<!non-)(?<!un)calcified\ nodul\w*"""),
    ),
    _Concept("Edema", _rx(r"\bedema\b | \bedematous | \bcephalization | \bkerley")),
    _Concept(
        "Edema",
        _rx(r"\b(?:vascular|pulmonary|venous|interstitial)\ congestion | \bvascular\ (?:prominence|indistinctness)"),
        hedged=True,
    ),
    _Concept("Consolidation", _rx(r"\bconsolidat\w*")),
    _Concept("Pneumonia", _rx(r"pneumonia\w* | \binfection | \binfectious")),
    _Concept(
        "Atelectasis",
        _rx(r"\batelecta\w* | \bcollapsed?\b"),
        # not a vertebral body's collapse
        exclude=_rx(r"""(?:vertebra\w*|compression|body|bodies)\W+(?:\w+\W+){0,3}collapsed?
                        | collapsed?\W+(?:\w+\W+){0,3}vertebra\w*"""),
    ),
    _Concept("Pneumothorax", _rx(r"pneumothora\w*")),
    _Concept(
        "Pleural Effusion",
        _rx(r"\beffusions?\b | \bpleural\ fluid | \bhydrothorax"),
        exclude=_rx(r"\b(?:pericardial|joint)\ effusions?"),
    ),
    _Concept(
        "Pleural Effusion",
        _rx(r"\bblunt\w*(?=\W+(?:\w+\W+){0,4}costophrenic) | (?<=costophrenic\ )(?:\w+\ ){0,2}blunt\w*"),
        hedged=True,
    ),
    _Concept(
        "Pleural Other",
        _rx(r"""\bpleural\ (?:thickening|plaques?|scar\w*|calcification\w*) | \bpleural[ -]parenchymal\ scar\w*
                | \bpleuro-?parenchymal\ scar\w* | \bfibrothorax | \bapical\ (?:pleural\ )?capping"""),
    ),
    _Concept("Fracture", _rx(r"\bfractur\w*")),
    _Concept(
        "Support Devices",
        _rx(r"""\b(?:tubes?|lines?|catheters?|pacemakers?|pacers?|picc|ports?|port-a-cath|stents?|devices?|hardware
                |defibrillators?|aicd|icd|drains?|coils?|leads?|electrodes?|clips?|prosthe\w*|wires?)\b
                | \bsternotomy\ (?:wires?|sutures?|xxxx) | \bvalve\ (?:replacement|prosthesis)"""),
        exclude=_rx(r"""\b(?:pleural|septal|kerley|b|azygos|fissural|skin|reticular)\ lines? | \bline\ of\b"""),
    ),
    _Concept(
        None,
        _rx(r"""\bemphysema\w* | \bhyperinfla\w* | \bhyperexpansion | \bhernia\w* | \bgranuloma\w* | \bcalcifi\w*
                | \bdegenerat\w* | scoliosis | kyphosis | \bosteophytosis | \bosteopenia | \batheroscler\w*
                | \bcopd\b | \bbullae?\b | \bbullets?\b | \beventration | \belevat\w* | \bthickening | \bplaques?\b
                | \bdeformit\w* | \bhematoma | \bhemorrhage | \baspiration | \bcontusion | \bpneumomediastinum
                | \bpneumoperitoneum | \bbronchi(?:tis|olitis|ectasis) | \basthma | \bairways?\ disease | \bvolume\ loss
                | \bprominen\w* | \bcuffing | \bmetasta\w*"""),
    ),
)

# A clause ends at these; negation and hedges do not reach past them.
_CLAUSE_BREAK = _rx(r"""\b(?:but|however|although|though|except|aside\ from|apart\ from|other\ than|besides|whereas
                        |while|yet|there\ (?:is|are|has|have))\b | :""")
# Within a clause, a phrase also ends at a comma ("normal heart size, small effusion"),
# unless the comma is part of a list closed by and/or ("normal heart size, mediastinal and aortic contours").
_PHRASE_BREAK = _rx(r",(?!.*\b(?:and|or)\b)")
# A comma before a grade or a side starts a new statement that "no" and hedges before it do not
# reach ("no pneumothorax, mild cardiomegaly", "no effusion, left basilar atelectasis"), unless an
# "or" closes a negated list after it ("no focal consolidation, large pleural effusion, or
# pneumothorax"). Not before "stable": "heart size within normal limits, stable mediastinal
# contours" is one statement.
_STATEMENT_BREAK = _rx(r""",(?=\ *(?:mild|moderate|severe|small|large|minimal|trace|tiny|marked|slight|extensive
                                     |borderline|healed|old|left|right|bilateral|bibasilar)\w*\b)
                          (?!.*\b(?:or|nor)\b)""")

_EXCLUDE = r"(?:exclude[sd]?|rule[sd]?\ out|ruled\ out)"
# Linking verbs and the adverbs that may stand between a subject and its predicate.
_COPULA = r"""(?:is|are|was|were|has\ been|have\ been|appears?|appear\ to\ be|to\ be|remains?|seems?|looks?
               |measures?|has\ become|became|has|have)\ """
_ADVERBS = r"""(?:(?:otherwise|now|again|still|also|overall|grossly|essentially|xxxx|\w+ly|stable\ and
                  |near|at|on|of|the|a)\ ){0,3}"""

# Pre-negation uncertainty: checked first so that "not excluded" is not read as "not".
_PRE_UNCERTAIN_BEFORE = _rx(rf"""\b(?:cannot|can\ not|could\ not|may\ not|does\ not|do\ not|not|difficult\ to
                                    |unable\ to)\ (?:be\ )?(?:entirely\ |completely\ |totally\ |definitely\ )?
                                 {_EXCLUDE}""")
_PRE_UNCERTAIN_AFTER = _rx(rf"""(?:{_COPULA})?(?:cannot|can\ not|could\ not|may\ not|not)\ (?:be\ )?
                                (?:entirely\ |completely\ )?{_EXCLUDE}
                                | not\ (?:well|clearly|fully|definitively|adequately)
                                  \ (?:seen|visualized|evaluated|assessed|identified)
                                | (?:poorly|incompletely)\ (?:seen|visualized|evaluated|assessed)""")
# Negation before a mention reaches over the clause ("no focal consolidation, pleural
# effusion, or pneumothorax"); "no (interval) change / progression of" says nothing about presence.
_NEGATION_BEFORE = _rx(r"""\b(?:no|without)\b(?!\ (?:\w+\ )?(?:change|progression|increase|growth|worsening))
                           | \bnot\b | \bnor\b | \bneither\b | \bfree\ of
                           | \bclear(?:ing)?\ of | \bnegative\ for | \babsence\ of | \bresolution\ of | \bresolved\b
                           | \bremoval\ of | \bremoved\b | \bhistory\ of | \brather\ than | \bexclude[sd]?\b""")
# ... but "normal" only reaches over its own phrase ("normal heart size and mediastinal contours"),
# and "clear with" names what is there ("the lungs are clear with mild bibasilar atelectasis").
_NEGATION_BEFORE_IN_PHRASE = _rx(r"\bnormal\b | \bunremarkable\b | \bclear\b(?!\ with\b)")
_NORMAL = r"""(?:normal|unremarkable|negative|absent|clear|(?:top|upper|high)[ -](?:limits?\ )?(?:of\ )?normal)\b"""
_NEGATION_AFTER = _rx(rf"""(?:{_COPULA})?(?:not|no\ longer)\ (?:\w+ly\ )?(?:seen|identified|visualized|demonstrated
                                                                 |present|evident|appreciated|noted|detected|apparent
                                                                 |visible|enlarged|widened|increased)
                          | (?:has|have)\ (?:\w+ly\ )?(?:resolved|cleared|been\ removed) | \bresolved\b | \bremoved\b
                          | (?:{_COPULA})?{_ADVERBS}within\ (?:the\ )?(?:normal|limits\ of\ normal)
                          | {_COPULA}{_ADVERBS}{_NORMAL}(?!\ or\b)
                          # without a verb "normal" must end the phrase: "heart size normal", not "... and normal lungs"
                          | {_ADVERBS}{_NORMAL}(?=\ *(?:$|[,;]|\b(?:and|in|for|with|without|size|limits)\b))""")
_HEDGE_BEFORE = _rx(r"""\bpossibl[ey]\b | \bprobabl[ey]\b | \b(?:un)?likely\b | \bpresum\w* | \bsuspect\w*
                        | \bsuspicio\w* | \bconcern\w* | \bworrisome\b | \bquestion\w* | \bmay\b | \bmight\b
                        | \bcould\b | \bsuggest\w*
                        | \bconsider(?:ed)?\b | \bfavou?r\w* | \bdifferential\b | \bversus\b | \bvs\b | \bborderline\b
                        | \bequivocal\b | (?<!age-)(?<!age\ )\bindeterminate\b | \bcannot\ (?:differentiate|distinguish)
                        | \bpotential\w* | \buncertain\b""")
# IU X-Ray's de-identification masked every "likely" as "XXXX" (the word never occurs there):
# "opacities in the lung bases, XXXX subsegmental atelectasis", "XXXX representing atelectasis".
# It masked "linear" too (never there either), so a sentence's "XXXX atelectasis" or "mild,
# XXXX opacity" stays what it says; before "subsegmental" (always after an opacity) it is "likely".
_MASKED_LIKELY = _rx(r"""(?<!mild)(?<!minimal),\ *xxxx\ (?:\w+\ ){0,2}$ | \bxxxx\ (?:to\ )?(?:represent|reflect)\w*
                         | \bmost\ xxxx\b | \bxxxx\ subsegmental\ $""")
# "or" hedges only the phrase it joins: "atelectasis or pneumonia".
_HEDGE_BEFORE_IN_PHRASE = _rx(r"\bor\b")
_HEDGE_AFTER = _rx(rf"""{_COPULA}(?:\w+ly\ )?(?:possible|likely|suspected|questioned|probable|favou?red|considered
                                              |uncertain|equivocal|questionable|borderline)
                       | (?:may|might|could|can)\ (?:also\ )?be\ (?:present|seen|noted|identified)
                       # "the heart may be mildly enlarged", "heart size is possibly enlarged"
                       | (?:may|might|could)\ (?:also\ )?be\b | (?:{_COPULA})?(?:possibly|probably|questionably)\b
                       # "heart size is upper limits normal or mildly enlarged"
                       | {_COPULA}{_ADVERBS}{_NORMAL}\ or\b""")
_ALTERNATIVE_AFTER = _rx(r"^\ ?(?:\w+\ )?(?:and/)?(?:or|versus|vs)\b")
# A subject between a mention and its predicate holds no predicate of its own and no new
# clause: "the heart size and pulmonary vascularity appear ..." but not
# "heart enlarged, pulmonary vascularity within normal limits".
_NOT_IN_SUBJECT = _rx(r"""\b(?:is|are|was|were|be|been|has|have|had|appears?|seems?|remains?|shows?|demonstrates?
                            |measur\w*|enlarg\w*|widen\w*|prominen\w*|increased|decreased|present|seen|noted|identified
                            |which|that|who)\b
                          | ,\ *(?:the|a|an|there|this|these|it|which|with)\b""")
_MAX_SUBJECT_WORDS = 10

# Size statements that make a heart or mediastinum mention count.
# ("stable", "unchanged" say nothing about size.)
_SIZE_ABNORMAL = _rx(r"\benlarg\w* | \bwide\w* | \bprominen\w* | \bincrease[sd]?\b | \b(?:large|big|borderline)\b")


def _clause_bounds(sentence: str, start: int, end: int, breaks: re.Pattern[str]) -> tuple[int, int]:
    """The span around ``[start, end)`` that contains no break."""
    left, right = 0, len(sentence)
    for match in breaks.finditer(sentence):
        if match.end() <= start:
            left = match.end()
        elif match.start() >= end:
            right = match.start()
            break
    return left, right


def _reaches_back(predicate: re.Pattern[str], after: str) -> bool:
    """Whether ``after`` (text following a mention) starts with a subject list, then ``predicate``."""
    match = predicate.search(after)
    if match is None:
        return False
    subject = after[: match.start()]
    return not _NOT_IN_SUBJECT.search(subject) and len(subject.split()) <= _MAX_SUBJECT_WORDS


def _mention_state(sentence: str, concept: _Concept, start: int, end: int) -> int | None:
    """CheXpert value of one mention: -1, 0, 1, or None where a size-less heart mention does not count."""
    c_left, c_right = _clause_bounds(sentence, start, end, _CLAUSE_BREAK)
    s_left, s_right = _clause_bounds(sentence, start, end, _STATEMENT_BREAK)
    p_left, p_right = _clause_bounds(sentence, start, end, _PHRASE_BREAK)
    p_left, p_right = max(p_left, s_left), min(p_right, s_right)
    before, after = sentence[max(c_left, s_left) : start], sentence[end:c_right]
    phrase_before = sentence[max(c_left, p_left) : start]

    if _PRE_UNCERTAIN_BEFORE.search(before) or _reaches_back(_PRE_UNCERTAIN_AFTER, after):
        return UNCERTAIN
    if (
        _NEGATION_BEFORE.search(before)
        or _NEGATION_BEFORE_IN_PHRASE.search(phrase_before)
        or _reaches_back(_NEGATION_AFTER, after)
    ):
        return NEGATIVE
    hedged = (
        concept.hedged
        or bool(_HEDGE_BEFORE.search(before))
        or bool(_MASKED_LIKELY.search(before))
        or bool(_HEDGE_BEFORE_IN_PHRASE.search(phrase_before))
        or _reaches_back(_HEDGE_AFTER, after)
        or bool(_ALTERNATIVE_AFTER.search(after))
    )
    if concept.needs_size:
        phrase = sentence[max(c_left, p_left) : min(c_right, p_right)]
        if not _SIZE_ABNORMAL.search(phrase):
            return None
    return UNCERTAIN if hedged else POSITIVE


def _aggregate(values: list[int]) -> int:
    """CheXpert's rule across mentions: positive beats uncertain beats negative."""
    for value in (POSITIVE, UNCERTAIN):
        if value in values:
            return value
    return NEGATIVE


def label_report(text: str) -> dict[str, int | None]:
    """CheXpert labels of a report: 1 positive, 0 negative, -1 uncertain, None not mentioned.

    Keys are the 14 observations in ``OBSERVATIONS`` order.
    """
    found: dict[str | None, list[int]] = {}
    for sentence in split_sentences(text.lower()):
        for concept in _CONCEPTS:
            excluded = [m.span() for m in concept.exclude.finditer(sentence)] if concept.exclude else []
            for match in concept.mention.finditer(sentence):
                if any(s < match.end() and match.start() < e for s, e in excluded):
                    continue
                value = _mention_state(sentence, concept, *match.span())
                if value is not None:
                    found.setdefault(concept.observation, []).append(value)

    labels: dict[str, int | None] = {name: None for name in OBSERVATIONS}
    for name, values in found.items():
        if name is not None:
            labels[name] = _aggregate(values)
    abnormal = any(
        _aggregate(values) != NEGATIVE for name, values in found.items() if name != "Support Devices"
    )
    labels["No Finding"] = None if abnormal else POSITIVE
    return labels
