"""Tiny models and batches for the model tests: built in seconds, no files needed."""
from __future__ import annotations

import torch

from rrg_core.config import REVTAFConfig
from rrg_core.indexing import build_index
from rrg_core.model import REVTAF
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.tokenizer import train_tokenizer

REPORTS = [
    "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . no focal consolidation . no pleural effusion .",
    "small left pleural effusion . the heart size is normal . no pneumothorax .",
    "right lower lobe consolidation concerning for pneumonia . no pneumothorax .",
    "endotracheal tube terminates above the carina . the lungs are clear .",
    "moderate cardiomegaly with pulmonary edema . small bilateral pleural effusions .",
]


def tiny_tokenizer():
    return train_tokenizer(REPORTS * 3, vocab_size=200, min_frequency=1)


def tiny_batch(tokenizer, config: REVTAFConfig, n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    images = torch.randn(n, config.n_views, 1, size, size, generator=g)
    reports = [REPORTS[i % len(REPORTS)] for i in range(n)]
    enc = tokenizer(reports, add_special_tokens=False, padding=True, return_tensors="pt")
    states = torch.full((n, len(OBSERVATIONS)), int(State.BLANK))
    for i in range(n):
        states[i, i % 5] = int(State.POSITIVE)
        states[i, (i + 2) % 7] = int(State.NEGATIVE)
    return {
        "images": images,
        "report_ids": enc["input_ids"],
        "report_mask": enc["attention_mask"],
        "states": states,
        "study_ids": [f"s{i}" for i in range(n)],
        "reports": reports,
    }


def tiny_model(seed: int = 0, **overrides) -> tuple[REVTAF, dict]:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = REVTAFConfig.preset("tiny", vocab_size=len(tokenizer), **overrides)
    model = REVTAF(config, tokenizer)
    batch = tiny_batch(tokenizer, config)
    model.index = build_index(model, [batch])
    return model, batch
