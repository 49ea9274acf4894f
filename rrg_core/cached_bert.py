"""The report decoder's forward pass for decoding, driving transformers' BertLMHeadModel layers
with the image memory's cross-attention keys and values computed once per study.

transformers' own cached forward stores the cross-attention keys/values once per beam and
reorders them with the self-attention cache on every step, although every beam of a study
attends to the same memory. Here each study's keys/values are kept once, and the queries of all
rows of a study (its beams, or the sentences being scored) are stacked along the query axis
instead: the same scores, one matrix product per study. Only the self-attention cache has a row
per beam. The math follows transformers 5's modeling_bert (sdpa attention, post-LayerNorm
blocks), calling the model's own sub-modules, so a quantised copy of the model runs as well.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import BertLMHeadModel

KeysValues = list[tuple[Tensor, Tensor]]  # per layer, keys and values [rows, heads, length, head size]


@dataclass
class SelfCache:
    """Each layer's self-attention keys/values so far, one row per running sequence."""

    layers: KeysValues

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2]

    def select(self, rows: Tensor) -> None:
        """Keep (and duplicate) the given rows: the beams that continue, in their new order."""
        self.layers = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.layers]


class CachedBert:
    """Runs ``bert`` (a BertLMHeadModel with cross-attention, in eval mode) a few tokens at a
    time over rows grouped by study: rows ``b * group ... (b + 1) * group - 1`` belong to
    study ``b`` and share its memory's keys/values."""

    def __init__(self, bert: BertLMHeadModel) -> None:
        self.bert = bert
        self.layers = bert.bert.encoder.layer
        first = self.layers[0].attention.self
        self.heads, self.head_size = first.num_attention_heads, first.attention_head_size

    def _split_heads(self, x: Tensor, batch: int) -> Tensor:
        """[batch, length * g, hidden] -> [batch, heads, length * g, head size]."""
        return x.reshape(batch, -1, self.heads, self.head_size).transpose(1, 2)

    def memory_keys_values(self, memory: Tensor) -> KeysValues:
        """Each layer's cross-attention keys/values of the projected memory [B, N, hidden]."""
        b = memory.shape[0]
        return [
            (self._split_heads(a.key(memory), b), self._split_heads(a.value(memory), b))
            for a in (layer.crossattention.self for layer in self.layers)
        ]

    def forward(self, ids: Tensor, memory: KeysValues, cache: SelfCache | None) -> tuple[Tensor, SelfCache]:
        """ids [rows, T] from the start (``cache`` None; causal, so right padding is harmless: no
        real token attends to a later one), or [rows, 1] continuing ``cache`` -> the last layer's
        hidden states [rows, T, hidden] and the cache including these tokens."""
        rows, steps = ids.shape
        studies = memory[0][0].shape[0]
        past = cache.length if cache is not None else 0
        h = self.bert.bert.embeddings(input_ids=ids, cache_length=past)
        layers = []
        for i, layer in enumerate(self.layers):
            attention = layer.attention.self
            q, k, v = (self._split_heads(p(h), rows) for p in (attention.query, attention.key, attention.value))
            if cache is not None:
                k, v = torch.cat([cache.layers[i][0], k], 2), torch.cat([cache.layers[i][1], v], 2)
            layers.append((k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling, is_causal=steps > 1)
            h = layer.attention.output(out.transpose(1, 2).reshape(rows, steps, -1), h)

            cross = layer.crossattention.self
            q = self._split_heads(cross.query(h), studies)  # a study's rows side by side on the query axis
            out = F.scaled_dot_product_attention(q, *memory[i], scale=cross.scaling)
            h = layer.crossattention.output(out.transpose(1, 2).reshape(rows, steps, -1), h)
            h = layer.output(layer.intermediate(h), h)
        return h, SelfCache(layers)

    def logits(self, hidden: Tensor) -> Tensor:
        """The language-model head's token scores for hidden states [..., hidden]."""
        return self.bert.cls(hidden)
