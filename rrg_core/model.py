"""REVTAF: the whole model, one class.

    image(s) -> VisualEncoder -> patch tokens, pooled vector
    region/entity prompts -> TextEncoder -> FVTAF.align_regions (MPSA) -> entity scores
    entity scores -> LRE (Poincare ball) -> retrieve top-k references from the ReferenceIndex
    pooled + top-k references -> DiagnosisHead -> 14 x 4 states -> prompt tokens
    top-1 reference's sentences -> FVTAF.align_global (MPSA) -> fused memory (both branches)
    prompt tokens + memory -> ReportDecoder (BERT) -> report

Loss = LM + 4 cls + beta align + alpha rank + entity (+ grounding on data with masks; each
term also returned on its own).
Switches: ``use_lre`` (off: retrieval by cosine on the pooled image vector, no ranking loss),
``use_fvtaf`` (off: the decoder reads the plain patch tokens), ``use_mpsa`` (off: softmax
cross-attention). All off is the PromptMRG-like baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from .config import REVTAFConfig
from .decisions import DecisionRule, apply_overrides, coherent, parse_overrides, rule_text
from .decoder import ReportDecoder
from .diagnosis import DiagnosisHead
from .faithful import make_consistent
from .fvtaf import FVTAF, consistency_loss
from .gate import annotate, refuse_colour
from .grounding import grounding_loss
from .lre import EntityScores, LearnableRetrievalEnhancer, entity_loss
from .mpsa import MPSAOutput
from .observations import OBSERVATIONS, STATE_NAMES
from .prompts import N_FINDING_PROMPTS
from .outputs import AttentionMap, Reference, Report, right_share
from .preprocessing import prepare_image, upsample_maps
from .reference_index import ReferenceIndex
from .report_text import split_sentences, to_prose
from .text_encoder import TextEncoder
from .visual_encoder import VisualEncoder, VisualFeatures, coarsen


@dataclass
class _Encoded:
    """Everything the image side computes before the decoder."""

    visual: VisualFeatures
    prompts: Tensor | None  # [B, K, D] region/entity prompt embeddings
    region: MPSAOutput | None
    entity_logits: Tensor | None  # [B, K]
    query: Tensor | None  # [B, H] retrieval embedding


class REVTAF(nn.Module):
    def __init__(
        self, config: REVTAFConfig, tokenizer: PreTrainedTokenizerBase, index: ReferenceIndex | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.visual = VisualEncoder(config)
        self.text = TextEncoder(config, tokenizer)
        aligns = config.use_lre or config.use_fvtaf
        self.fvtaf = FVTAF(config) if aligns else None
        self.entity_scores = (
            EntityScores(len(config.prompts), config.entity_pooling, config.sinkhorn_epsilon) if aligns else None
        )
        self.prompt_offsets = None
        if aligns and config.prompt_offsets:
            self.prompt_offsets = nn.Parameter(torch.randn(len(config.prompts), config.d_model))
        self.lre = LearnableRetrievalEnhancer(config) if config.use_lre else None
        self.diagnosis = DiagnosisHead(config)
        self.decoder = ReportDecoder(config, tokenizer)
        self.index = index
        # Per-observation thresholds tuned at release (decision.json beside the weights); None:
        # the argmax rule of DiagnosisHead.decide.
        self.decision: DecisionRule | None = None
        self.gate = None  # rrg_core.gate.Gate and rrg_core.calibration.Calibration, loaded from sidecar files
        self.calibration = None

    # ------------------------------------------------------------------ shared image side
    @property
    def retrieval_metric(self) -> str:
        return self.config.search_metric

    def _encode(self, images: Tensor, *, retrieval: bool = True) -> _Encoded:
        """``retrieval=False`` skips the retrieval embedding (``query`` is then None)."""
        visual = self.visual(images)
        prompts = region = entity_logits = None
        if self.fvtaf is not None:
            prompts = self.text(self.config.prompts)
            if self.prompt_offsets is not None:
                prompts = prompts + self.prompt_offsets
            prompts = prompts.unsqueeze(0).expand(images.shape[0], -1, -1)
            region = self.fvtaf.align_regions(visual.tokens, prompts)
            entity_logits = self.entity_scores(region)
        query = None
        if retrieval:
            query = self.lre(entity_logits) if self.lre is not None else F.normalize(visual.pooled, dim=-1)
        return _Encoded(visual, prompts, region, entity_logits, query)

    def _retrieve(self, query: Tensor, exclude_ids: Sequence[str] | None) -> tuple[Tensor, Tensor]:
        if self.index is None or len(self.index) == 0:
            raise RuntimeError("the model has no reference index: build one with train.build_index or rrg_core.build_index")
        k = min(self.config.top_k, len(self.index) - (1 if exclude_ids is not None else 0))
        if k < 1:
            raise RuntimeError("the reference index is too small to retrieve from")
        return self.index.search(query.detach().float(), k, metric=self.retrieval_metric, exclude_ids=exclude_ids)

    def _references(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        device = self.diagnosis.query.device
        text = self.index.report_embeddings(indices.cpu()).to(device)
        states = self.index.label_states[indices.cpu()].to(device).long()
        return text, states

    def _global(self, encoded: _Encoded, top1: Tensor) -> tuple[MPSAOutput, Tensor, Tensor]:
        sentences, mask = self.index.gather(top1.cpu())
        sentences, mask = sentences.to(encoded.visual.tokens.device), mask.to(encoded.visual.tokens.device)
        return self.fvtaf.align_global(encoded.visual.tokens, sentences, mask), sentences, mask

    def _memory(self, encoded: _Encoded, global_: MPSAOutput | None) -> Tensor:
        """The decoder's cross-attention memory: both fused token sets (FVTAF) or the plain patch
        tokens. With the feature pyramid each set is averaged over 2 x 2 tokens, back to the
        backbone's own stride: the fine grid is for the heatmaps, and the decoder attends to a
        quarter of the tokens."""
        parts = [encoded.visual.tokens] if global_ is None else [encoded.region.fused, global_.fused]
        if self.config.feature_pyramid:
            parts = [coarsen(p, encoded.visual.grid, encoded.visual.n_views) for p in parts]
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, *, image_only: bool = False) -> dict[str, Tensor]:
        """batch: images [B, V, 1, H, W], report_ids / report_mask [B, T] (report tokens without
        specials), states [B, 14] (State values), study_ids (list of B str, excluded from their
        own retrieval), and with ``grounding_weight`` masks [B, 13, H, W] (the frontal view's
        finding masks, :func:`rrg_core.study_dataset.finding_masks`). Returns the total ``loss``
        and each term.

        ``image_only``: the image-side warm-up objective, the label-supervised entity scores (and
        the grounding loss) alone (no retrieval, diagnosis or decoder; the other terms are
        returned as 0). A from-scratch image encoder learns the findings far faster per second this
        way than under the full objective, whose language and ranking terms dominate it at first."""
        if image_only and self.entity_scores is None:
            raise ValueError("image_only needs the entity scores (use_lre or use_fvtaf)")
        states = batch["states"].long()
        encoded = self._encode(batch["images"], retrieval=not image_only)
        zero = encoded.visual.pooled.sum() * 0.0
        losses = {"rank": zero, "entity": zero, "ground": zero, "align": zero, "cls": zero, "lm": zero}
        c = self.config
        if encoded.entity_logits is not None:
            losses["entity"] = entity_loss(encoded.entity_logits, states)
        if c.grounding_weight and "masks" in batch:
            losses["ground"] = grounding_loss(encoded.region.maps, batch["masks"], states, encoded.visual.grid)
        image_side = c.entity_weight * losses["entity"] + c.grounding_weight * losses["ground"]
        if image_only:
            losses["loss"] = image_side
            return losses
        if self.lre is not None:
            losses["rank"] = self.lre.ranking_loss(encoded.query, states)

        _, indices = self._retrieve(encoded.query, batch.get("study_ids"))
        reference_text, reference_states = self._references(indices)
        logits = self.diagnosis(encoded.visual.pooled, reference_text, reference_states, encoded.entity_logits)
        losses["cls"] = self.diagnosis.loss(logits, states)

        global_ = None
        if self.fvtaf is not None and self.fvtaf.fuses:
            global_, sentences, mask = self._global(encoded, indices[:, 0])
            losses["align"] = consistency_loss(encoded.region.maps, global_.maps, encoded.prompts, sentences, mask)
        memory = self._memory(encoded, global_)
        # Teacher forcing: the true states are the prompt during training (PromptMRG).
        losses["lm"] = self.decoder.loss(memory, states, batch["report_ids"], batch["report_mask"])

        losses["loss"] = (
            losses["lm"] + c.cls_weight * losses["cls"] + c.beta * losses["align"] + c.alpha * losses["rank"]
            + image_side
        )
        return losses

    # ------------------------------------------------------------------ references
    def sentence_embeddings(self, reports: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Each report's sentences embedded by the text encoder: [N, S, D] and mask [N, S]."""
        limit = self.config.max_reference_sentences
        per_report = [(split_sentences(r) or [r])[:limit] for r in reports]
        flat = [s for sentences in per_report for s in sentences]
        vectors = self.text(flat)
        out = vectors.new_zeros(len(reports), limit, vectors.shape[-1])
        mask = torch.zeros(len(reports), limit, dtype=torch.bool, device=vectors.device)
        start = 0
        for i, sentences in enumerate(per_report):
            out[i, : len(sentences)] = vectors[start : start + len(sentences)]
            mask[i, : len(sentences)] = True
            start += len(sentences)
        return out, mask

    @torch.no_grad()
    def reference_entries(self, images: Tensor, reports: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """What the index stores for a batch of training studies: retrieval embeddings [B, H],
        sentence embeddings [B, S, D] and their mask [B, S]."""
        query = self._encode(images).query
        sentences, mask = self.sentence_embeddings(reports)
        return query.float().cpu(), sentences.cpu(), mask.cpu()

    # ------------------------------------------------------------------ inference
    def _diagnose(self, encoded: _Encoded) -> tuple[Tensor, Tensor, Tensor]:
        """Raw diagnosis logits [B, 14, 4] from the image and its top-k references (with their
        distances and indices)."""
        distances, indices = self._retrieve(encoded.query, None)
        logits = self.diagnosis(encoded.visual.pooled, *self._references(indices), encoded.entity_logits)
        return logits, distances, indices

    @torch.no_grad()
    def diagnosis_logits(self, images: Tensor) -> Tensor:
        """Raw diagnosis logits [B, 14, 4], without generating text (for tuning decisions)."""
        return self._diagnose(self._encode(images))[0]

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        *,
        image_sizes: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
        states: Sequence[Mapping[str, str | int] | None] | None = None,
        consistent: bool = True,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> list[Report]:
        """images [B, V, 1, H, W] (normalised, see :meth:`prepare`). Maps are returned at
        ``image_sizes``: per study one (H, W) for all views, or one per view (default: the
        input tensor's size). ``states``: per study, the reader's overrides (observation ->
        "positive" | "negative" | "uncertain" | "blank"), which the draft is written from.
        ``consistent=False`` returns the decoder's best beam as it is (for measuring what
        :mod:`rrg_core.faithful` changes); users always get the consistent draft."""
        c = self.config
        encoded = self._encode(images)
        logits, distances, indices = self._diagnose(encoded)
        probabilities, argmax_states = self.diagnosis.decide(logits, c.decision_adjustment)
        predicted = self.decision.decide(probabilities.cpu().numpy()) if self.decision else argmax_states.cpu().numpy()
        predicted = coherent(predicted)
        overrides = [parse_overrides(o) for o in (states or [None] * len(images))]
        if len(overrides) != len(images):
            raise ValueError(f"states: one override mapping per study expected, got {len(overrides)} for {len(images)}")
        final = np.stack([apply_overrides(p, o) for p, o in zip(predicted, overrides)])
        state_tensor = torch.as_tensor(final, device=images.device)

        global_ = None
        if self.fvtaf is not None and self.fvtaf.fuses:
            global_, _, _ = self._global(encoded, indices[:, 0])
        memory = self._memory(encoded, global_)
        candidates = self.decoder.generate(
            memory,
            state_tensor,
            num_beams=num_beams or c.num_beams,
            max_new_tokens=max_new_tokens or c.max_new_tokens,
            min_new_tokens=c.min_new_tokens if min_new_tokens is None else min_new_tokens,
            repetition_penalty=repetition_penalty or c.repetition_penalty,
            no_repeat_ngram_size=c.no_repeat_ngram_size if no_repeat_ngram_size is None else no_repeat_ngram_size,
        )
        sizes = list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * len(candidates)
        shown = self.calibration.calibrate if self.calibration is not None else None  # the table's P scale
        reports = []
        for b, beams in enumerate(candidates):
            attention = self._attention_maps(encoded, global_, b, sizes[b])
            shares = self._finding_sides(encoded, b)
            if consistent:
                choose = partial(self._likeliest, memory[b : b + 1], state_tensor[b : b + 1])
                consistency = make_consistent(beams, final[b], shares, choose)
            else:
                consistency = None
            reports.append(
                Report(
                    text=to_prose(consistency.text if consistency else beams[0]),
                    probabilities={o: probabilities[b, i].tolist() for i, o in enumerate(OBSERVATIONS)},
                    states=final[b].tolist(),
                    references=self._reference_list(distances[b], indices[b]),
                    attention=attention,
                    overrides={o: STATE_NAMES[s] for o, s in overrides[b].items()},
                    decision_rules={o: rule_text(o, self.decision, c.decision_adjustment, o in overrides[b], shown)
                                    for o in OBSERVATIONS},
                    consistency=consistency,
                    map_right_shares=shares,
                )
            )
        annotate(self, reports, images, encoded)
        return reports

    def _finding_sides(self, encoded: _Encoded, b: int) -> dict[str, float]:
        """Each finding's frontal map's share on the patient's right, at the model's input size."""
        if encoded.region is None:
            return {}
        grid, size = encoded.visual.grid, self.config.image_size
        frontal = encoded.region.maps[b, :N_FINDING_PROMPTS, : grid[0] * grid[1]]
        maps = upsample_maps(frontal, grid, (size, size), size)
        return {OBSERVATIONS[k]: right_share(maps[k]) for k in range(N_FINDING_PROMPTS)}

    def _likeliest(self, memory: Tensor, states: Tensor, sentences: list[str]) -> int:
        """Index of the sentence the decoder finds most likely for this study."""
        if len(sentences) == 1:
            return 0
        return int(self.decoder.sentence_scores(memory, states, sentences).argmax())

    def _reference_list(self, distances: Tensor, indices: Tensor) -> list[Reference]:
        texts = self.index.texts
        return [
            Reference(
                study_id=self.index.study_ids[i],
                distance=float(d),
                label_states=self.index.label_states[i].tolist(),
                text=texts[i] if texts is not None else None,
                is_global_prompt=(rank == 0 and self.fvtaf is not None and self.fvtaf.fuses),
            )
            for rank, (d, i) in enumerate(zip(distances.tolist(), indices.tolist()))
        ]

    def _attention_maps(
        self, encoded: _Encoded, global_: MPSAOutput | None, b: int, sizes: tuple | Sequence[tuple[int, int]]
    ) -> list[AttentionMap]:
        """Per view: one map per region/entity prompt and one for the global reference (the
        mask-weighted mean over its sentences), upsampled to that view's image size."""
        if encoded.region is None:
            return []
        grid, views = encoded.visual.grid, encoded.visual.n_views
        if isinstance(sizes[0], int):
            sizes = [sizes] * views
        # The first prompts are the finding prompts, in OBSERVATIONS order (see rrg_core.prompts).
        names = [OBSERVATIONS[k] if k < N_FINDING_PROMPTS else None for k in range(len(self.config.prompts))]
        out = []
        for v in range(views):
            span = slice(v * grid[0] * grid[1], (v + 1) * grid[0] * grid[1])
            size = tuple(sizes[min(v, len(sizes) - 1)])
            region = upsample_maps(encoded.region.maps[b, :, span], grid, size, self.config.image_size)
            out += [
                AttentionMap(p, "region", region[k], view=v, observation=names[k])
                for k, p in enumerate(self.config.prompts)
            ]
            if global_ is not None:
                # Masked sentences have all-zero maps, so a plain sum is the mask-weighted sum.
                merged = global_.maps[b, :, span].sum(0, keepdim=True)
                merged = upsample_maps(merged, grid, size, self.config.image_size)[0]
                out.append(AttentionMap("retrieved reference report", "global", merged, view=v))
        return out

    # ------------------------------------------------------------------ Hub-style persistence
    def save_pretrained(self, directory, **kwargs) -> None:
        from .pretrained import save_pretrained

        save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls, weights=None, **kwargs) -> "REVTAF":
        from .pretrained import from_pretrained

        return from_pretrained(weights, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        from .pretrained import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ convenience
    def prepare(self, views: Sequence[object]) -> Tensor:
        """One study's views (XRay objects or float H x W arrays) -> [V, 1, S, S]. A one-view
        study given to a two-view model repeats its view (the model then reads it twice)."""
        arrays = [getattr(v, "pixels", v) for v in views]
        if not 1 <= len(arrays) <= 2:
            raise ValueError(f"a study has 1 or 2 views, got {len(arrays)}")
        if len(arrays) < self.config.n_views:
            arrays = arrays * self.config.n_views
        c = self.config
        return torch.stack([prepare_image(a, c.image_size, c.image_mean, c.image_std) for a in arrays[: c.n_views]])

    @torch.no_grad()
    def generate_from_xrays(
        self, studies: Sequence[object | Sequence[object]], *, max_map_side: int | None = None, **options
    ) -> list[Report]:
        """Generate for studies given as XRay objects / arrays (one per study, or a list of views).
        Heatmaps come at each view's resolution, or, with ``max_map_side``, scaled down to at most
        that many pixels on the long side (a full-size radiograph's 35 maps take about a GB)."""
        studies = [s if isinstance(s, (list, tuple)) else [s] for s in studies]
        images = torch.stack([self.prepare(views) for views in studies]).to(self.diagnosis.query.device)
        sizes = [[_capped_size(getattr(v, "pixels", v).shape, max_map_side) for v in views] for views in studies]
        reports = self.generate(images, image_sizes=sizes, **options)
        refuse_colour(reports, [max(getattr(v, "colour", 0.0) for v in views) for views in studies])
        return reports


def _capped_size(shape: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """An image's (H, W), scaled down to ``max_side`` on its long side (aspect kept), if given."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
