"""The report decoder's texts from transformers' own ``generate``: the reference that
:meth:`rrg_core.decoder.ReportDecoder.generate`'s loop must reproduce (used by the tests and
benchmarks/bench_decoder.py, never by the library)."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache

from rrg_core.decoder import PREFIX_LENGTH, ReportDecoder
from rrg_core.model import REVTAF
from rrg_core.preprocessing import prepare_study


@torch.no_grad()
def transformers_generate(
    decoder: ReportDecoder, memory: Tensor, states: Tensor, *, num_beams: int = 3, max_new_tokens: int = 100,
    min_new_tokens: int = 10, **penalties: float,
) -> list[list[str]]:
    """What ``decoder.generate`` returned before its own loop, with the same arguments
    (``penalties``: repetition_penalty, no_repeat_ngram_size, whose defaults are transformers')."""
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
        eos_token_id=decoder.eos_id,
        pad_token_id=decoder.pad_id,
        **penalties,
    )
    texts = decoder.tokenizer.batch_decode(sequences[:, PREFIX_LENGTH:], skip_special_tokens=True)
    return [texts[i : i + num_beams] for i in range(0, len(texts), num_beams)]


@torch.no_grad()
def decoder_inputs(model: REVTAF, studies: list) -> tuple[Tensor, Tensor]:
    """The memory [B, N, D] and states [B, 14] (the diagnosis's) that ``model`` hands its decoder
    for these studies (one XRay each)."""
    images = torch.stack([prepare_study([xray], model.config) for xray in studies])
    encoding = model.encode(images)
    diagnosis = model.diagnose(encoding)
    return model.read_references(encoding, diagnosis)[0], diagnosis.states
