"""The report decoder's texts from transformers' own ``generate``: the reference that
:meth:`rrg_core.decoder.ReportDecoder.generate`'s loop must reproduce (used by the tests and
benchmarks/bench_decoder.py, never by the library)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache

from rrg_core.decoder import PREFIX_LENGTH, ReportDecoder


@torch.no_grad()
def transformers_generate(
    decoder: ReportDecoder, memory: Tensor, states: Tensor, *, num_beams: int = 3, max_new_tokens: int = 100,
    min_new_tokens: int = 10, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
) -> list[list[str]]:
    """What ``decoder.generate`` returned before its own loop, with the same arguments."""
    prefix = decoder.prefix(states)
    config = decoder.bert.config
    sequences = decoder.bert.generate(
        input_ids=prefix,
        attention_mask=torch.ones_like(prefix),
        encoder_hidden_states=decoder.memory_projection(memory),
        # transformers 5 needs a fresh encoder-decoder cache on every call with encoder_hidden_states
        cache=EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config)),
        num_beams=num_beams,
        num_return_sequences=num_beams,
        do_sample=False,
        max_new_tokens=min(max_new_tokens, decoder.max_report_tokens + 1),
        min_new_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        eos_token_id=decoder.eos_id,
        pad_token_id=decoder.pad_id,
    )
    texts = decoder.tokenizer.batch_decode(sequences[:, PREFIX_LENGTH:], skip_special_tokens=True)
    return [texts[i : i + num_beams] for i in range(0, len(texts), num_beams)]


def decoder_inputs(model, studies: list, **options) -> tuple[Tensor, Tensor]:
    """The memory [B, N, D] and states [B, 14] that ``model`` hands its decoder for these studies
    (XRays, one per study), recorded from a real ``generate_from_xrays`` call."""
    recorded: dict[str, Tensor] = {}
    decode: Callable = model.decoder.generate

    def record(memory: Tensor, states: Tensor, **kwargs) -> list[list[str]]:
        recorded.update(memory=memory, states=states)
        return decode(memory, states, **kwargs)

    model.decoder.generate = record
    try:
        model.generate_from_xrays(studies, consistent=False, num_beams=1, max_new_tokens=1, **options)
    finally:
        del model.decoder.generate
    return recorded["memory"], recorded["states"]
