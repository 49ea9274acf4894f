"""Diagnosis branch (from PromptMRG): 14 observations x 4 states, read from the image and
from the top-k retrieved reports, whose predicted states become the decoder's prompt tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import REVTAFConfig
from .observations import OBSERVATIONS, State

N_OBS = len(OBSERVATIONS)
N_STATES = len(State)


class DiagnosisHead(nn.Module):
    """A one-query DETR-style read-out over the retrieved reports, concatenated with the pooled
    image vector, then a linear classifier per observation.

    Each retrieved report is represented by its text embedding plus an embedding of its label
    states, so the memory carries both what the neighbours say and what they were labelled.
    When the model aligns, the query also carries the image's entity scores (layer-
    normalised): label-supervised per-finding evidence that a mean-pooled vector dilutes.
    """

    def __init__(self, config: REVTAFConfig) -> None:
        super().__init__()
        d = config.d_model
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.state_embedding = nn.Embedding(N_OBS * N_STATES, d)
        self.readout = nn.TransformerDecoderLayer(
            d, config.n_heads, dim_feedforward=2 * d, dropout=config.dropout, batch_first=True, norm_first=True
        )
        self.evidence = None  # the entity scores, which exist when the model aligns
        if config.aligns:
            self.evidence = nn.Sequential(nn.LayerNorm(len(config.text.prompts)), nn.Linear(len(config.text.prompts), d))
        self.classifier = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, N_OBS * N_STATES))
        priors = torch.full((N_OBS, N_STATES), 1.0 / N_STATES)
        if config.diagnosis.label_priors is not None:
            priors = torch.tensor(config.diagnosis.label_priors, dtype=torch.float32)
            if priors.shape != (N_OBS, N_STATES):
                raise ValueError(f"label_priors must be [{N_OBS}][{N_STATES}], got {list(priors.shape)}")
        # Only the POS column is adjusted, as in PromptMRG/REVTAF: log p(positive) per observation.
        adjustment = torch.zeros(N_OBS, N_STATES)
        adjustment[:, State.POSITIVE] = priors[:, State.POSITIVE].clamp(min=1e-4).log()
        self.register_buffer("logit_adjustment", adjustment, persistent=False)

    def forward(
        self, pooled: Tensor, reference_text: Tensor, reference_states: Tensor, entity_logits: Tensor | None = None
    ) -> Tensor:
        """pooled [B, D]; reference_text [B, k, D]; reference_states [B, k, 14]; entity_logits
        [B, K] (when the model aligns) -> logits [B, 14, 4]."""
        if self.evidence is not None:
            pooled = pooled + self.evidence(entity_logits)
        offsets = torch.arange(N_OBS, device=reference_states.device) * N_STATES
        memory = reference_text + self.state_embedding(reference_states.long() + offsets).mean(dim=2)
        query = self.query.expand(pooled.shape[0], -1, -1) + pooled.unsqueeze(1)
        read = self.readout(query, memory).squeeze(1)
        return self.classifier(torch.cat([pooled, read], dim=-1)).view(-1, N_OBS, N_STATES)

    def decide(self, logits: Tensor, adjustment: float = 1.0) -> tuple[Tensor, Tensor]:
        """(probabilities [B, 14, 4], states [B, 14]) at inference.

        Trained with the log prior added, ``logits + log prior`` estimate the true posterior,
        which is what the probabilities report. The states take ``logits + adjustment * log
        prior``: 1 is the plain posterior argmax, 0 the balanced decision of logit adjustment
        (many more positives for rare observations); the value is tuned on validation data
        for F1 (see train.release) and stored in the config."""
        logits = logits.float()
        probabilities = (logits + self.logit_adjustment).softmax(-1)
        states = (logits + adjustment * self.logit_adjustment).argmax(-1)
        return probabilities, states

    def loss(self, logits: Tensor, states: Tensor) -> Tensor:
        """Cross-entropy with logit adjustment (Menon et al.): during training the log prior of
        each observation is added to its POS logit, so at inference, without it, rare positives
        are not drowned by the frequent blank and negative states."""
        adjusted = logits + self.logit_adjustment
        return F.cross_entropy(adjusted.reshape(-1, N_STATES), states.reshape(-1).long())
