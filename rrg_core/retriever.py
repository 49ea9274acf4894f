"""The reference index as a part of the model.

:class:`~rrg_core.reference_index.ReferenceIndex` is the searchable store (faiss on the CPU,
saved beside the weights). The retriever holds it inside the ``nn.Module`` tree: what the
diagnosis head and the global alignment read of each reference (sentence embeddings, their
mask, label states) are non-persistent buffers, so ``model.to("cuda")`` moves them with the
weights, nothing round-trips through the CPU per step, and ``model.safetensors`` stays free of
them (the index is saved in its own files).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .reference_index import ReferenceIndex


class Retriever(nn.Module):
    def __init__(self, index: ReferenceIndex | None, top_k: int, metric: str) -> None:
        super().__init__()
        self.top_k, self.metric = top_k, metric
        self.index: ReferenceIndex | None = None
        for name in ("sentences", "sentence_mask", "label_states"):
            self.register_buffer(name, torch.empty(0), persistent=False)
        self.attach(index)

    def attach(self, index: ReferenceIndex | None) -> None:
        """Use ``index`` from now on (training rebuilds it every epoch); its tensors go to the
        device the retriever is on."""
        device = self.sentences.device
        self.index = index
        if index is None:
            self.sentences, self.sentence_mask, self.label_states = (torch.empty(0, device=device) for _ in range(3))
            return
        self.sentences = index.sentence_embeddings.to(device)
        self.sentence_mask = index.sentence_mask.to(device)
        self.label_states = index.label_states.to(device)

    def search(self, query: Tensor, exclude_ids: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """The top-k references of each query: (distances [B, k], indices [B, k]), on the query's
        device. ``exclude_ids`` (training) keeps each study from retrieving itself."""
        if self.index is None or len(self.index) == 0:
            raise RuntimeError("the model has no reference index: build one with train.build_index or rrg_core.build_index")
        k = min(self.top_k, len(self.index) - (1 if exclude_ids is not None else 0))
        if k < 1:
            raise RuntimeError("the reference index is too small to retrieve from")
        return self.index.search(query.detach().float(), k, metric=self.metric, exclude_ids=exclude_ids)

    def reports(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """What the diagnosis head reads of references [B, k]: one vector per report (the mean of
        its sentence embeddings) [B, k, D] and its label states [B, k, 14]."""
        sentences, mask = self.sentences_of(indices)
        weights = mask.unsqueeze(-1).to(sentences.dtype)
        report = (sentences * weights).sum(-2) / weights.sum(-2).clamp_min(1)  # the mean of its sentences
        return report, self.label_states[indices].long()

    def sentences_of(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Sentence embeddings [..., S, D] (float32) and their mask [..., S] of the given references."""
        return self.sentences[indices].float(), self.sentence_mask[indices]
