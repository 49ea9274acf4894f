"""Report text handling: the field's cleaning, sentence splitting and truncation.

BLEU/METEOR/ROUGE numbers are only comparable across papers when the reports are
cleaned the same way, so :func:`normalize_report` reproduces R2Gen's cleaning
(``clean_report_iu_xray`` / ``clean_report_mimic_cxr`` in R2Gen's
``modules/tokenizers.py``, reused unchanged by PromptMRG) character for character.
"""
from __future__ import annotations

import re

DATASETS = ("iu_xray", "mimic_cxr")

# R2Gen strips these from every sentence. Its character class contains the range
# ':-[' (':;<=>?@', the capitals and '['); digits survive. Reproduced as is.
_R2GEN_STRIP = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_R2GEN_QUOTES_AND_SLASHES = str.maketrans("", "", "\"/\\'")
# R2Gen drops list numbering "1. " ... "5. " with plain string replacements, in this order.
_R2GEN_NUMBERING = (
    ("1. ", ""),
    (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
    (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "),
)

# A sentence ends at '.', '?', '!' or ';' unless the '.' is a decimal point ("4.5 cm").
_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[?!;]")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def _replace_repeatedly(text: str, old: str, new: str, times: int) -> str:
    """R2Gen collapses runs with a fixed number of ``str.replace`` passes, not a regex."""
    for _ in range(times):
        text = text.replace(old, new)
    return text


def normalize_report(text: str, dataset: str = "iu_xray") -> str:
    """Clean a report exactly as R2Gen does, so BLEU is comparable with published numbers.

    Lower-cased, sentences split on ``'. '``, punctuation stripped per sentence and
    re-joined as ``'sent one . sent two .'``. Like R2Gen, empty sentences are kept
    (R2Gen's emptiness check compares a string to ``[]`` and never fires) and digits
    are kept.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset == "mimic_cxr":
        text = text.replace("\n", " ")
        text = _replace_repeatedly(text, "__", "_", 7)
        text = _replace_repeatedly(text, "  ", " ", 6)
        text = _replace_repeatedly(text, "..", ".", 8)
    else:
        text = _replace_repeatedly(text, "..", ".", 3)
    for old, new in _R2GEN_NUMBERING:
        text = text.replace(old, new)
    sentences = text.strip().lower().split(". ")
    cleaned = [
        _R2GEN_STRIP.sub("", s.translate(_R2GEN_QUOTES_AND_SLASHES).strip().lower()) for s in sentences
    ]
    return " . ".join(cleaned) + " ."


def split_sentences(text: str) -> list[str]:
    """Sentences of a raw or normalised report, stripped, without their final punctuation.

    Works on both forms because normalised text ends sentences with ``' .'``.
    Decimal points do not split, and fragments without a letter (list numbers such
    as ``"1."``, stray dots) are dropped.
    """
    parts = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in parts if _HAS_LETTER.search(p)]


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words (R2Gen truncates reports by tokens)."""
    if max_words < 0:
        raise ValueError(f"max_words must be >= 0, got {max_words}")
    return " ".join(text.split()[:max_words])


# Abbreviations that a clinical reader expects in capitals (the tokenizer lower-cases everything).
_ABBREVIATIONS = ("xxxx", "ij", "et", "ng", "og", "picc", "aicd", "icd", "svc", "ivc", "copd", "ct", "ap", "pa",
                  "cabg", "chf", "ekg", "ecg", "mri", "t1", "t12", "l1", "ge")
_ABBREVIATION = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\b")


def to_prose(text: str) -> str:
    """Decoder output (``"plate - like atelectasis . no effusion ."``) as clinical prose
    (``"Plate-like atelectasis. No effusion."``): the tokenizer's spacing undone, sentences in
    sentence case, known abbreviations in capitals. The metrics normalise text again
    (:func:`normalize_report`), so this changes what a reader sees, not how it is scored."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*-\s*", "-", text)  # "plate - like" -> "plate-like"
    text = re.sub(r"\s*/\s*", "/", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\s+\)", ")", text)
    text = re.sub(r"(\d)\s*\.\s*(\d)", r"\1.\2", text)  # "2 . 5 cm" -> "2.5 cm"
    text = re.sub(r"\s+([.,;:?!%])", r"\1", text)
    text = re.sub(r"([.;?!])(?=[^\s\d])", r"\1 ", text)
    text = _ABBREVIATION.sub(lambda m: m.group(1).upper(), text)
    sentences = re.split(r"(?<=[.?!])\s+", text)
    return " ".join(s[:1].upper() + s[1:] for s in sentences if s)
