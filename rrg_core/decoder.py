"""Report decoder: transformers' BertLMHeadModel with cross-attention over the fused visual
memory, prompted by the predicted diagnostic states (PromptMRG's prompt tokens).

Sequence layout: ``[BOS] s_1 ... s_14 [SEP] report tokens [EOS]`` where s_i is the state
token ([BLA]/[POS]/[NEG]/[UNC]) of observation i; the loss covers the report part only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertLMHeadModel, PreTrainedTokenizerBase

from .beam_search import SearchOptions, beam_search, greedy
from .cached_bert import CachedBert
from .config import REVTAFConfig
from .observations import OBSERVATIONS
from .text_encoder import small_bert
from .tokenizer import state_token_ids

PREFIX_LENGTH = len(OBSERVATIONS) + 2  # [BOS] + 14 states + [SEP]


class ReportDecoder(nn.Module):
    def __init__(self, config: REVTAFConfig, tokenizer: PreTrainedTokenizerBase, saved: Path | None = None) -> None:
        """``saved``: where a saved model keeps its Hub decoder's config (see :mod:`rrg_core.model`)."""
        super().__init__()
        self.tokenizer = tokenizer
        if config.decoder.hub_id and saved is not None:  # a saved model: the architecture, no download
            self.bert = BertLMHeadModel(BertConfig.from_pretrained(saved))
        elif config.decoder.hub_id:
            self.bert = BertLMHeadModel.from_pretrained(config.decoder.hub_id, is_decoder=True, add_cross_attention=True)
            self.bert.resize_token_embeddings(len(tokenizer))
        else:
            d = config.decoder
            self.bert = BertLMHeadModel(small_bert(
                tokenizer, d.hidden, d.layers, d.heads, PREFIX_LENGTH + d.max_report_tokens + 2, config.dropout,
                is_decoder=True, add_cross_attention=True,
            ))
        self.memory_projection = nn.Linear(config.d_model, self.bert.config.hidden_size)
        self.register_buffer("state_ids", torch.tensor(state_token_ids(tokenizer)), persistent=False)
        self.bos_id = tokenizer.convert_tokens_to_ids("[BOS]")
        self.sep_id = tokenizer.convert_tokens_to_ids("[SEP]")
        self.eos_id = tokenizer.convert_tokens_to_ids("[EOS]")
        self.pad_id = tokenizer.pad_token_id
        self.max_report_tokens = config.decoder.max_report_tokens

    def prefix(self, states: Tensor) -> Tensor:
        """[B, 14] predicted or true states -> [B, 16] prompt token ids."""
        b = states.shape[0]
        bos = torch.full((b, 1), self.bos_id, device=states.device, dtype=torch.long)
        sep = torch.full((b, 1), self.sep_id, device=states.device, dtype=torch.long)
        return torch.cat([bos, self.state_ids[states.long()], sep], dim=1)

    def loss(self, memory: Tensor, states: Tensor, report_ids: Tensor, report_mask: Tensor) -> Tensor:
        """Teacher-forced LM loss. report_ids [B, T] are report tokens *without* specials
        (padding where report_mask is 0); [EOS] is appended here."""
        b = report_ids.shape[0]
        lengths = report_mask.sum(1)
        eos_column = torch.full((b, 1), self.pad_id, dtype=torch.long, device=report_ids.device)
        body = torch.cat([report_ids, eos_column], dim=1)
        body[torch.arange(b), lengths] = self.eos_id
        body_mask = torch.cat([report_mask, torch.zeros_like(eos_column)], dim=1)
        body_mask[torch.arange(b), lengths] = 1
        input_ids = torch.cat([self.prefix(states), body], dim=1)
        attention_mask = torch.cat([torch.ones(b, PREFIX_LENGTH, dtype=body_mask.dtype, device=body.device), body_mask], 1)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :PREFIX_LENGTH] = -100
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=self.memory_projection(memory),
            labels=labels,
        )
        return out.loss

    @torch.no_grad()
    def generate(
        self,
        memory: Tensor,
        states: Tensor,
        *,
        num_beams: int = 3,
        max_new_tokens: int = 100,
        min_new_tokens: int = 10,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[list[str]]:
        """Per study, every finished beam's text, best first (one text with ``num_beams`` 1):
        :func:`rrg_core.faithful.make_consistent` chooses among them. The texts are those of
        transformers' ``generate`` (beam search, or greedy with one beam), from a loop that
        computes the memory's cross-attention keys/values once per study."""
        options = SearchOptions(
            num_beams=num_beams,
            max_new_tokens=min(max_new_tokens, self.max_report_tokens + 1),
            min_new_tokens=min_new_tokens,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )
        model = CachedBert(self.bert)
        keys_values = model.memory_keys_values(self.memory_projection(memory))
        search = beam_search if num_beams > 1 else greedy
        sequences = search(model, self.prefix(states), keys_values, options)
        texts = self.tokenizer.batch_decode(sequences.flatten(0, -2)[:, PREFIX_LENGTH:], skip_special_tokens=True)
        return [texts[i : i + num_beams] for i in range(0, len(texts), num_beams)]

    @torch.no_grad()
    def sentence_scores(self, memory: Tensor, states: Tensor, sentences: list[str]) -> Tensor:
        """Mean log-likelihood per token of each sentence as a report opening, for one study
        (memory [1, N, D], states [1, 14]): how the decoder itself would phrase a finding, which
        the consistency repair uses to pick among the sentence bank's phrasings. All sentences
        share the memory's cross-attention keys/values."""
        encoded = self.tokenizer(sentences, add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = encoded["input_ids"].to(memory.device), encoded["attention_mask"].to(memory.device)
        model = CachedBert(self.bert)
        input_ids = torch.cat([self.prefix(states).expand(len(sentences), -1), ids], dim=1)
        hidden, _ = model.forward(input_ids, model.memory_keys_values(self.memory_projection(memory)), None)
        logits = model.logits(hidden[:, PREFIX_LENGTH - 1 : -1])
        token_log_p = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return (token_log_p * mask).sum(1) / mask.sum(1).clamp(min=1)
