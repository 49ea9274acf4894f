"""Text encoder: embeds region/entity prompts and report sentences into the shared width.

It stands in for the frozen MedKLIP/MedCLIP text features of the paper. The small presets
train their own (a small BERT encoder over the report tokenizer) jointly with the model;
the paper preset may name a Hub sentence encoder instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from .config import REVTAFConfig


def small_bert(
    tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, heads: int, positions: int, dropout: float, **extra
) -> BertConfig:
    """A BERT trained from scratch over our report tokenizer (the text encoder, and with
    ``is_decoder`` / ``add_cross_attention`` the report decoder)."""
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=positions, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, pad_token_id=tokenizer.pad_token_id, **extra,
    )


class TextEncoder(nn.Module):
    def __init__(self, config: REVTAFConfig, tokenizer: PreTrainedTokenizerBase, saved: Path | None = None) -> None:
        """``saved``: where a saved model keeps its Hub text encoder's config and tokenizer."""
        super().__init__()
        if config.text.hub_id and saved is not None:  # a saved model: the architecture, no download
            self.tokenizer = AutoTokenizer.from_pretrained(saved)
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(saved), add_pooling_layer=False)
        elif config.text.hub_id:
            self.tokenizer = AutoTokenizer.from_pretrained(config.text.hub_id)
            self.bert = AutoModel.from_pretrained(config.text.hub_id, add_pooling_layer=False)
        else:
            self.tokenizer = tokenizer
            text = config.text
            self.bert = BertModel(
                small_bert(tokenizer, text.hidden, text.layers, text.heads, text.max_tokens, config.dropout),
                add_pooling_layer=False,
            )
        self.project = nn.Sequential(nn.Linear(self.bert.config.hidden_size, config.d_model), nn.LayerNorm(config.d_model))
        self.max_tokens = config.text.max_tokens

    @property
    def device(self) -> torch.device:
        return self.project[0].weight.device

    def forward(self, texts: Sequence[str]) -> Tensor:
        """Embed each text (a prompt or one sentence) as one vector: [len(texts), d_model]."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.project(mean)
