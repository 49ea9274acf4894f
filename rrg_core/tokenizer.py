"""The report tokenizer: a lower-case WordPiece trained on the training reports.

It is a ``transformers.PreTrainedTokenizerFast``, so it is saved next to the weights
with ``save_pretrained`` and works offline. The diagnostic state tokens of the
prompt (``[BLA] [POS] [NEG] [UNC]``) are special tokens, never split into pieces.
A Hub tokenizer (e.g. ``bert-base-uncased`` for the full-size preset) can stand in;
it gets the same special tokens added on load.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .observations import STATE_TOKENS

# Role -> token. [PAD] comes first so that it gets id 0.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a lower-case WordPiece on ``texts`` (pass the normalised training reports).

    Encoding with special tokens gives ``[BOS] ... [EOS]``, what the decoder is trained on.
    Decoding keeps the normalised spacing (``"size . lungs"``), as R2Gen's decode does.
    """
    specials = [*SPECIAL_TOKENS.values(), *STATE_TOKENS]
    backend = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(cleanup=False)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials)
    backend.train_from_iterator(texts, trainer)

    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=list(STATE_TOKENS),
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )


def load_tokenizer(path_or_hub_id: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained``, or one from the Hub by id.

    Whatever it is, it comes back with our special tokens: a Hub tokenizer gets the
    missing roles and the state tokens appended to its vocabulary, so the model's
    embedding matrix must be resized to ``len(tokenizer)``.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_hub_id))
    except OSError as error:
        raise OSError(
            f"cannot load tokenizer {str(path_or_hub_id)!r}: not a saved tokenizer folder, "
            "and the Hugging Face Hub could not provide it (offline?)"
        ) from error
    missing_roles = {role: token for role, token in SPECIAL_TOKENS.items() if getattr(tokenizer, role) is None}
    missing_states = [t for t in STATE_TOKENS if t not in tokenizer.get_vocab()]
    if missing_roles or missing_states:
        tokenizer.add_special_tokens(
            {**missing_roles, "extra_special_tokens": missing_states}, replace_extra_special_tokens=False
        )
    return tokenizer


def state_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids of ``[BLA] [POS] [NEG] [UNC]`` in :class:`~rrg_core.observations.State` order."""
    ids = tokenizer.convert_tokens_to_ids(list(STATE_TOKENS))
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"tokenizer lacks the state tokens {STATE_TOKENS}; load it with load_tokenizer()")
    return ids
