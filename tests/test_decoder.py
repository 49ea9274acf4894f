"""ReportDecoder.generate's own cached loop gives transformers' ``generate`` texts, beam for beam,
shares each study's cross-attention keys/values across its beams, and the int8 copy stays close."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from decoder_reference import decoder_inputs, transformers_generate
from model_fixtures import tiny_model

from rrg_core.decoder import PREFIX_LENGTH
from rrg_core.model import load_model
from rrg_core.quantize import quantize_decoder
from rrg_core.xray_io import read_xray

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"

OPTIONS = [
    dict(num_beams=3, max_new_tokens=20, min_new_tokens=2),
    dict(num_beams=1, max_new_tokens=20, min_new_tokens=5),
    dict(num_beams=3, max_new_tokens=30, min_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=3),
    dict(num_beams=4, max_new_tokens=15, min_new_tokens=0, repetition_penalty=0.8, no_repeat_ngram_size=2),
    dict(num_beams=1, max_new_tokens=25, min_new_tokens=3, repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(num_beams=2, max_new_tokens=60, min_new_tokens=0),  # beyond the tiny preset's 40 report tokens
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()[0].eval()


@pytest.fixture(scope="module")
def default_model():
    return load_model().eval()


@pytest.fixture(scope="module")
def films(default_model):
    """The committed example films as a batch of five studies, as the default weights see them."""
    studies = [read_xray(p) for p in sorted(EXAMPLES.iterdir())]
    return decoder_inputs(default_model, studies)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_beams_text_equals_transformers_generate_on_the_tiny_preset(tiny, options, batch):
    g = torch.Generator().manual_seed(batch)
    for _ in range(3):
        memory = torch.randn(batch, 10, tiny.config.d_model, generator=g)
        states = torch.randint(0, 4, (batch, 14), generator=g)
        ours = tiny.decoder.generate(memory, states, **options)
        assert ours == transformers_generate(tiny.decoder, memory, states, **options)
        assert [len(texts) for texts in ours] == [options["num_beams"]] * batch


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(num_beams=3, max_new_tokens=100, min_new_tokens=10),  # the weights' own settings
    dict(num_beams=1, max_new_tokens=100, min_new_tokens=10),
    dict(num_beams=3, max_new_tokens=60, min_new_tokens=30),
    dict(num_beams=3, max_new_tokens=100, min_new_tokens=10, repetition_penalty=1.2, no_repeat_ngram_size=3),
    dict(num_beams=1, max_new_tokens=100, min_new_tokens=0, repetition_penalty=1.3, no_repeat_ngram_size=2),
], ids=str)
def test_every_beams_text_equals_transformers_generate_on_the_default_weights(default_model, films, options):
    memory, states = films
    ours = default_model.decoder.generate(memory, states, **options)
    assert ours == transformers_generate(default_model.decoder, memory, states, **options)
    assert all(texts[0].strip() for texts in ours)


def test_the_memorys_keys_and_values_are_computed_once_per_study_for_all_beams(tiny):
    rows = []
    hooks = [layer.crossattention.self.key.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
             for layer in tiny.decoder.bert.bert.encoder.layer]
    try:
        tiny.decoder.generate(torch.randn(2, 10, tiny.config.d_model), torch.zeros(2, 14, dtype=torch.long),
                              num_beams=3, max_new_tokens=12, min_new_tokens=12)
    finally:
        for hook in hooks:
            hook.remove()
    assert rows == [2] * len(hooks)  # one call per layer for the whole search, one row per study


def test_sentence_scores_equal_the_models_own_forward(default_model, films):
    decoder = default_model.decoder
    memory, states = films[0][:1], films[1][:1]
    sentences = ["the heart is normal in size .", "no pleural effusion or pneumothorax . the lungs are clear ."]
    encoded = decoder.tokenizer(sentences, add_special_tokens=False, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        logits = decoder.bert(
            input_ids=torch.cat([decoder.prefix(states).expand(2, -1), ids], 1),
            attention_mask=torch.cat([torch.ones(2, PREFIX_LENGTH, dtype=mask.dtype), mask], 1),
            encoder_hidden_states=decoder.memory_projection(memory).expand(2, -1, -1),
        ).logits[:, PREFIX_LENGTH - 1 : -1]
    expected = (logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0] * mask).sum(1) / mask.sum(1)
    assert torch.allclose(decoder.sentence_scores(memory, states, sentences), expected, atol=1e-5)


def test_bad_search_options_are_refused_in_one_sentence(tiny):
    memory, states = torch.randn(1, 10, tiny.config.d_model), torch.zeros(1, 14, dtype=torch.long)
    with pytest.raises(ValueError, match="num_beams and max_new_tokens must be at least 1, got 0 and 20"):
        tiny.decoder.generate(memory, states, num_beams=0, max_new_tokens=20)
    with pytest.raises(ValueError, match="repetition_penalty must be positive, got 0.0"):
        tiny.decoder.generate(memory, states, repetition_penalty=0.0)


@pytest.mark.slow
def test_the_int8_decoder_is_a_separate_copy_whose_likelihoods_stay_close(default_model, films):
    decoder = default_model.decoder
    quantized = quantize_decoder(decoder)
    assert isinstance(decoder.bert.cls.predictions.decoder, torch.nn.Linear)  # the float model is untouched
    assert type(quantized.bert.cls.predictions.decoder).__module__.startswith("torch.ao.nn.quantized")
    memory, states = films
    drafts = decoder.generate(memory, states)
    for b, beams in enumerate(quantized.generate(memory, states)):
        sentences = [beams[0], drafts[b][0]]
        float_scores = decoder.sentence_scores(memory[b : b + 1], states[b : b + 1], sentences)
        int8_scores = quantized.sentence_scores(memory[b : b + 1], states[b : b + 1], sentences)
        assert (float_scores - int8_scores).abs().max() < 0.02  # mean log-likelihood per token
        assert float_scores[1] >= float_scores[0] - 0.02  # int8's draft is about as likely to the float model
