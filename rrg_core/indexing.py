"""Building the reference index of a training set with the current model."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from .model import REVTAF
from .reference_index import ReferenceIndex


@torch.no_grad()
def build_index(model: REVTAF, batches: Iterable[dict], *, keep_texts: bool = True) -> ReferenceIndex:
    """Embed every study of ``batches`` (dicts from :func:`rrg_core.study_dataset.collate`).

    ``keep_texts=False`` builds an index without report text, for weights trained on data
    whose reports may not be redistributed (the app can attach them at run time)."""
    was_training = model.training
    model.eval()
    embeddings, sentences, masks, states, ids, texts = [], [], [], [], [], []
    try:
        for batch in batches:
            e, s, m = model.reference_entries(batch["images"].to(model.device), batch["reports"])
            embeddings.append(e)
            sentences.append(s.half())
            masks.append(m)
            states.append(batch["states"].to(torch.int8).cpu())
            ids += list(batch["study_ids"])
            texts += list(batch["reports"])
    finally:
        model.train(was_training)
    if not ids:
        raise ValueError("cannot build a reference index from no studies")
    return ReferenceIndex(
        embeddings=torch.cat(embeddings),
        sentence_embeddings=torch.cat(sentences),
        sentence_mask=torch.cat(masks),
        label_states=torch.cat(states),
        study_ids=ids,
        texts=texts if keep_texts else None,
        curvature=float(model.lre.ball.c) if model.lre is not None else model.config.lre.curvature,
        metric=model.config.search_metric,
    )
