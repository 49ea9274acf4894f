"""Report cleaning (R2Gen's, character for character), sentence splitting and truncation."""
from __future__ import annotations

import pytest

from rrg_core.report_text import normalize_report, split_sentences, truncate_words


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The heart is normal in size. The lungs are clear.", "the heart is normal in size . the lungs are clear ."),
        # list numbering, doubled dots, punctuation and slashes; digits survive, the decimal point does not
        (
            "1. No pneumothorax.. 2. Heart size (normal); lungs: clear/ok. A 4.5 cm nodule.",
            "no pneumothorax . heart size normal lungs clearok . a 45 cm nodule .",
        ),
        ('XXXX are "normal", it\'s fine!', "xxxx are normal its fine ."),
        # R2Gen keeps empty sentences: its emptiness check never fires
        ("Normal. . Clear.", "normal .  . clear ."),
        ("", " ."),
    ],
)
def test_normalize_iu_xray(raw: str, expected: str) -> None:
    assert normalize_report(raw) == expected


def test_normalize_mimic_collapses_newlines_underscores_and_spaces() -> None:
    raw = "FINDINGS:\n Heart   size normal.  ___ Lungs clear...."
    assert normalize_report(raw, "mimic_cxr") == "findings heart size normal .  lungs clear ."
    # the IU cleaning leaves newlines and runs of spaces alone
    assert normalize_report(raw) == "findings\n heart   size normal .  lungs clear ."


def test_normalize_rejects_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        normalize_report("x.", "chexpert")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The heart is normal. Lungs are clear.", ["The heart is normal", "Lungs are clear"]),
        ("the heart is normal . lungs are clear .", ["the heart is normal", "lungs are clear"]),
        ("A 4.5 cm nodule. No effusion; no pneumothorax!", ["A 4.5 cm nodule", "No effusion", "no pneumothorax"]),
        ("1. Cardiomegaly. 2. Small effusion..", ["Cardiomegaly", "Small effusion"]),
        ("  ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_truncate_words() -> None:
    assert truncate_words("the  heart is\nnormal .", 3) == "the heart is"
    assert truncate_words("a b", 10) == "a b"
    assert truncate_words("a b", 0) == ""
    with pytest.raises(ValueError):
        truncate_words("a", -1)
