"""The report tokenizer: trained offline, saved with the weights, state tokens kept whole."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from rrg_core.observations import STATE_TOKENS
from rrg_core.report_text import normalize_report
from rrg_core.tokenizer import SPECIAL_TOKENS, load_tokenizer, state_token_ids, train_tokenizer

REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "No focal consolidation, pleural effusion, or pneumothorax.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Endotracheal tube terminates 4 cm above the carina.",
]
TEXTS = [normalize_report(r) for r in REPORTS] * 2


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXTS, vocab_size=200, min_frequency=1)


def test_special_tokens_come_first_and_pad_is_zero(tokenizer: PreTrainedTokenizerFast) -> None:
    specials = [*SPECIAL_TOKENS.values(), *STATE_TOKENS]
    assert tokenizer.convert_tokens_to_ids(specials) == list(range(len(specials)))
    assert tokenizer.pad_token_id == 0
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("[BOS]", "[EOS]", "[UNK]")


def test_state_tokens_are_single_tokens_in_state_order(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = state_token_ids(tokenizer)
    assert ids == [6, 7, 8, 9]
    encoded = tokenizer("[POS] [NEG] [UNC] [BLA] the heart").input_ids
    assert encoded[:5] == [tokenizer.bos_token_id, ids[1], ids[2], ids[3], ids[0]]
    assert encoded[-1] == tokenizer.eos_token_id


def test_lower_case_and_unknown_words(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer("The HEART").input_ids == tokenizer("the heart").input_ids
    assert tokenizer.unk_token_id in tokenizer("€").input_ids


def test_decode_gives_back_the_normalised_report(tokenizer: PreTrainedTokenizerFast) -> None:
    for text in TEXTS[:5]:
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_save_and_load_round_trip(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert len(loaded) == len(tokenizer)
    for text in [*TEXTS[:5], "[POS] [UNC] pneumothorax"]:
        assert loaded(text).input_ids == tokenizer(text).input_ids
    assert state_token_ids(loaded) == state_token_ids(tokenizer)
    assert loaded.pad_token_id == 0


def test_a_hub_style_tokenizer_gets_the_missing_special_tokens(tmp_path: Path) -> None:
    """A BERT tokenizer (as bert-base-uncased would be) keeps its vocabulary and gains ours."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "."]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(tmp_path)

    loaded = load_tokenizer(tmp_path)
    assert (loaded.pad_token_id, loaded.sep_token_id) == (0, 3)  # BERT's own roles are kept
    assert (loaded.bos_token, loaded.eos_token) == ("[BOS]", "[EOS]")
    ids = state_token_ids(loaded)
    assert sorted(ids) == list(range(len(vocab) + 2, len(vocab) + 6))  # appended after [BOS] [EOS]
    tokens = loaded.convert_ids_to_tokens(loaded("[POS] the heart [UNC]").input_ids)
    assert tokens == ["[CLS]", "[POS]", "the", "heart", "[UNC]", "[SEP]"]


def test_state_token_ids_refuses_a_tokenizer_without_them() -> None:
    bare = BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3})
    with pytest.raises(ValueError, match="state tokens"):
        state_token_ids(bare)


def test_load_tokenizer_offline_unknown_id_says_why() -> None:
    with pytest.raises(OSError, match="cannot load tokenizer 'no-such-org/no-such-tokenizer'"):
        load_tokenizer("no-such-org/no-such-tokenizer")
